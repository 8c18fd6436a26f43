"""Thinking-token and answer-length samples for reasoning clients, from ServeGen's DeepSeek-R1
production statistics (../shared/data/servegen_deepseek_r1, Apache-2.0).

    python calibration/servegen_thinking.py     # a few seconds; writes hermes_jax/scenarios/data/

ServeGen gives, per client and 6-hour window, the distributions of output tokens and of
reason_ratio (the share of output tokens spent reasoning), not per-request pairs. A request is drawn
as: a window with probability proportional to its requests (rate x 600 s summed over the window's
600 s rows), then output tokens and reason ratio independently from that window's distributions
(their correlation within a window is not published: an assumption). Thinking = round(output x
ratio), answer = output - thinking (at least 1). Writes one length per line, for
``{ dist = "empirical", path = ... }`` in a scenario, with this provenance in the header.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration.data import ROOT  # noqa: E402

DATA = ROOT / "servegen_deepseek_r1"
OUT = Path(__file__).resolve().parents[1] / "hermes_jax" / "scenarios" / "data"
SAMPLES = 20000


def windows() -> list[tuple[float, dict]]:
    """(requests in the window, its three distributions) for every client's 6-hour window."""
    out = []
    for dataset in sorted(DATA.glob("chunk-*-dataset.json")):
        trace = pd.read_csv(str(dataset).replace("-dataset.json", "-trace.csv"), header=None)
        requests = trace[1].to_numpy(float) * 600.0           # rate x window length, per 600 s row
        for start, dists in json.loads(dataset.read_text()).items():
            rows = (trace[0] >= float(start)) & (trace[0] < float(start) + 21600)
            weight = float(requests[rows.to_numpy()].sum())
            if weight > 0:
                out.append((weight, {k: ast.literal_eval(v) for k, v in dists.items()}))
    return out


def draw(dist: dict, n: int, rng) -> np.ndarray:
    values = np.array(list(dist), float)
    p = np.array(list(dist.values()), float)
    return rng.choice(values, n, p=p / p.sum())


def main() -> None:
    rng = np.random.default_rng(0)
    found = windows()
    weights = np.array([w for w, _ in found])
    pick = rng.choice(len(found), SAMPLES, p=weights / weights.sum())
    thinking, answer = np.empty(SAMPLES), np.empty(SAMPLES)
    for k in np.unique(pick):
        at = pick == k
        out = draw(found[k][1]["output_tokens"], int(at.sum()), rng)
        ratio = draw(found[k][1]["reason_ratio"], int(at.sum()), rng)
        thinking[at] = np.round(out * ratio)
        answer[at] = np.maximum(out - thinking[at], 1)
    thinking = np.maximum(thinking, 1)   # a length file holds positive numbers
    OUT.mkdir(parents=True, exist_ok=True)
    header = (f"# written by calibration/servegen_thinking.py from servegen_deepseek_r1 (ServeGen, Apache-2.0): "
              f"{SAMPLES} draws over {len(found)} client-windows weighted by requests; output tokens and reason_ratio "
              "drawn independently within a window\n")
    for name, values in (("deepseek_r1_thinking.txt", thinking), ("deepseek_r1_answer.txt", answer)):
        (OUT / name).write_text(header + "\n".join(str(int(v)) for v in values) + "\n")
    print(f"{len(found)} windows; thinking mean {thinking.mean():.0f} (median {np.median(thinking):.0f}, p99 "
          f"{np.percentile(thinking, 99):.0f}); answer mean {answer.mean():.0f}; output mean "
          f"{(thinking + answer).mean():.0f}; written to {OUT}")


if __name__ == "__main__":
    main()
