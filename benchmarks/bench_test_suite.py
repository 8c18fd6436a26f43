"""CPU time of the test suite at two commits, side by side on this machine; writes
benchmarks/results/test_suite.md. Run: python benchmarks/bench_test_suite.py [--baseline REV] [--rev REV]

Each commit is cloned into a temporary directory (next to a link to ../shared, which the tests
read) and its suite runs as the README says (``python3 -m pytest``) with the package imported from
that clone; CPU seconds (user + system of pytest and its children) and wall seconds are reported.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_suite(rev: str, work: Path) -> dict:
    clone = work / rev.replace("/", "_")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    shared = ROOT.parent / "shared"
    if shared.exists() and not (work / "shared").exists():
        (work / "shared").symlink_to(shared)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(clone), HERMES_JAX_CACHE="off"))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return {"rev": rev, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "wall_s": wall, "summary": re.sub(r"\s+", " ", tail), "returncode": done.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="1dc7698", help="commit to compare against (default: before issue 15)")
    parser.add_argument("--rev", default="HEAD")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_suite(rev, Path(tmp)) for rev in (args.baseline, args.rev)]
    base, new = rows
    lines = ["# Test suite CPU time (`python benchmarks/bench_test_suite.py`)", "",
             f"Machine: {os.cpu_count()} cores. Each commit's suite as the README runs it, one after the other.", "",
             "| commit | CPU s (user + system) | wall s | result |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rev']} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['summary']} |")
    lines += ["", f"CPU time ratio {args.rev} / {args.baseline}: {new['cpu_s'] / base['cpu_s']:.2f}.", ""]
    (HERE / "results" / "test_suite.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
