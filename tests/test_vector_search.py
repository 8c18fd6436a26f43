"""Vector search: the shipped constants reproduce the held-out big-ann-benchmarks points (skipped
when ../shared/data is absent), and the cost and recall model behave physically."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration import fit_vector_search as fit  # noqa: E402
from hermes_jax.hardware.catalog import get_hardware  # noqa: E402
from hermes_jax.pipeline.retrieval import VectorSearch  # noqa: E402


@pytest.mark.skipif(not fit.DATA.exists(), reason=f"measured data not found at {fit.DATA}")
def test_shipped_fit_reproduces_held_out_speed_and_recall():
    df = fit.load()
    defaults = {k: getattr(VectorSearch, k) for k in ("visit_s", "descent", "code_s", "core_stream_bandwidth")}
    df["model"] = fit.predicted_qps(df, defaults)
    held = df[df.split == "held-out knobs"]
    assert set(held["index"]) == {"hnsw", "ivf"} and len(held) == 5
    # calibration/results/vector_search.md: 2.8% (graph), 1.3% (ivf)
    assert np.abs(held.model / held.qps - 1).max() < 0.05
    recall = np.array([fit.stage(r.index, r.knob).recall() for r in held.itertuples()])
    assert np.abs(recall - held.recall).max() < 0.04
    # the datasheet alone (no random-access latency, full DRAM share per core) is far off
    naive = dict(defaults, visit_s=0.0, core_stream_bandwidth=1e13, code_s=0.0)
    off = fit.predicted_qps(held, naive) / held.qps.to_numpy()
    assert (off > 2).all()


def test_more_search_costs_more_and_finds_more():
    params = get_hardware("h100-sxm").params
    for knob, index in (("ef", "hnsw"), ("nprobe", "ivf")):
        stages = [VectorSearch(index=index, **{knob: k}) for k in (8, 32, 128)]
        seconds = [float(s.query_seconds(params)) for s in stages]
        recall = [s.recall() for s in stages]
        assert np.all(np.diff(seconds) > 0) and np.all(np.diff(recall) > 0) and 0 < recall[0] and recall[-1] < 1
    flat = VectorSearch(index="flat", vectors=1e6)
    assert flat.recall() == 1.0
    # a flat scan of 1M 768-d float32 vectors streams 3 GB: at least 3 GB / the per-core bandwidth
    assert float(flat.query_seconds(params)) >= 1e6 * 768 * 4 / flat.core_stream_bandwidth
    # more threads per query: proportionally faster
    two = VectorSearch(index="hnsw", threads=2)
    assert float(two.query_seconds(params)) == pytest.approx(float(VectorSearch().query_seconds(params)) / 2)
