"""Pipelines (RAG stages, KV fetch from a tier, generate): the time-stepped run against the exact
event-driven reference, request conservation along each pipeline, what each stage does to the
request, gradients through stage service times, and load-time errors."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax.errors import ConfigError
from hermes_jax.pipeline.run import resource_params, simulate_pipeline, station_times
from hermes_jax.pipeline.retrieval import Embed
from hermes_jax.pipeline.stages import KVFetch
from hermes_jax.sim import load_scenario

RAG_KV = Path(__file__).resolve().parents[1] / "hermes_jax" / "scenarios" / "rag_kv.toml"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(RAG_KV, ["simulation.horizon_s=15"])


@pytest.fixture(scope="module")
def runs(scenario):
    return simulate_pipeline(scenario), simulate_pipeline(scenario, reference=True)


def test_matches_reference_per_request_and_stage(runs):
    fast, exact = runs
    assert (fast.requests.status == exact.requests.status).all()
    for col in ("engine_arrival_s", "admit_s", "first_token_s", "finish_s", "ttft_s"):
        np.testing.assert_allclose(fast.requests[col], exact.requests[col], atol=1e-5, err_msg=col)
    a, b = fast.extra["stages"], exact.extra["stages"]
    assert (a[["request", "stage"]].to_numpy() == b[["request", "stage"]].to_numpy()).all()
    for kind in a.stage.str.split(":").str[1].unique():   # error per stage kind
        part = a.stage.str.endswith(kind)
        for col in ("start_s", "finish_s"):
            np.testing.assert_allclose(a[part][col], b[part][col], atol=1e-5, err_msg=f"{kind} {col}")


def test_every_request_walks_its_pipeline_in_order(scenario, runs):
    fast, _ = runs
    df, st = fast.requests, fast.extra["stages"]
    assert len(df) == df.request.nunique() and set(df.status) <= {"finished", "unfinished", "rejected"}
    expected = {c.name: [f"{k}:{s.kind}" for k, s in enumerate(c.pipeline)] for c in scenario.clients}
    for request, part in st.groupby("request"):
        client = df.client[request]
        assert part.stage.tolist() == expected[client]
        done = part[part.finish_s.notna()]
        assert (done.ready_s <= done.start_s + 1e-9).all() and (done.start_s <= done.finish_s + 1e-9).all()
        chain = part.sort_values("stage")
        # each stage starts from the previous one's finish; the first from the client's arrival
        assert chain.ready_s.iloc[0] == pytest.approx(df.arrival_s[request])
        np.testing.assert_allclose(chain.ready_s.to_numpy()[1:], chain.finish_s.to_numpy()[:-1])
    rag, chat = df[df.client == "rag"], df[df.client == "chat"]
    assert (rag.retrieved_tokens == 4 * 256).all() and (rag.cached_tokens == 0).all()
    assert (chat.cached_tokens < chat.input_tokens).all() and 0.5 < (chat.cached_tokens > 0).mean() < 0.9
    # the engine's prompt carries the retrieved passages; TTFT counts every stage from arrival
    assert (rag.engine_arrival_s > rag.arrival_s).all()
    assert (df.ttft_s >= df.first_token_s - df.engine_arrival_s).all()


def test_fetched_prefix_is_not_prefilled_again(scenario, runs):
    fast, _ = runs
    chat = next(c for c in scenario.clients if c.name == "chat")
    miss = dataclasses.replace(chat, pipeline=(dataclasses.replace(chat.pipeline[0], hit_rate=0.0), chat.pipeline[1]))
    others = tuple(c for c in scenario.clients if c.name != "chat")
    cold = simulate_pipeline(dataclasses.replace(scenario, clients=others + (miss,)))
    warm_ttft = fast.requests[fast.requests.client == "chat"].ttft_s.mean()
    cold_ttft = cold.requests[cold.requests.client == "chat"].ttft_s.mean()
    assert (cold.requests.cached_tokens == 0).all()
    assert warm_ttft < 0.8 * cold_ttft


def test_gradients_through_stage_service_times(scenario):
    """Every stationed stage kind: d(mean finish)/d(log hardware parameter) against central
    differences in float64, and faster hardware finishes earlier."""
    from hermes_jax.pipeline.retrieval import Rerank, Route, VectorSearch
    from hermes_jax.pipeline.spec import Resource
    resources = {r.name: r for r in scenario.resources}
    resources["net"] = Resource("net", "link", "h100-sxm", link="roce-400g")
    release = jnp.asarray(np.sort(np.random.default_rng(0).uniform(0, 2, 60)))
    nbytes = jnp.asarray(np.random.default_rng(1).uniform(1e8, 4e8, 60))
    cases = [(Embed(on="embed-cpu", model="bge-base-en-v1.5", threads=2), "embed-cpu", "cpu_core_flops", None),
             (Route(on="embed-cpu", model="bge-base-en-v1.5", to=("a", "b"), weights=(0.5, 0.5)), "embed-cpu",
              "cpu_core_flops", None),
             (VectorSearch(on="search-cpu", index="ivf", nprobe=64, threads=4), "search-cpu", "cpu_core_flops", None),
             # a core that could stream faster than its share of DRAM: bound by the node's bandwidth
             (VectorSearch(on="search-cpu", index="ivf", core_stream_bandwidth=1e12), "search-cpu", "cpu_dram_bandwidth",
              None),
             (Rerank(on="rerank-gpu", model="bge-reranker-base", batch=4), "rerank-gpu", "peak_flops", None),
             (KVFetch(on="cxl"), "cxl", "tier_bandwidth", nbytes),
             (KVFetch(on="net"), "net", "inter_link_bandwidth", nbytes)]
    with jax.enable_x64(True):
        for stage, name, field, size in cases:
            params = resource_params(resources[name], jnp.float64)

            def mean_finish(log_value):
                p = type(params)({**params.log, field: log_value})
                return station_times(resources[name], stage, p, release, size)[1].mean()
            x = params.log[field]
            g = jax.grad(mean_finish)(x)
            h = 1e-5
            basis = jnp.eye(x.size).reshape((x.size,) + x.shape) if x.ndim else jnp.ones((1,))
            for e in basis:
                fd = float((mean_finish(x + h * e) - mean_finish(x - h * e)) / (2 * h))
                analytic = float(jnp.sum(g * e))
                assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-12), (stage.kind, field)
            assert float(jnp.sum(g)) < 0, (stage.kind, field)   # faster hardware, earlier finish


BAD = {
    "unknown stage": ('{ stage = "teleport", on = "cpu" }', "teleport"),
    "unknown resource": ('{ stage = "embed", on = "gpu9", model = "bge-base-en-v1.5" }', "unknown resource 'gpu9'"),
    "wrong resource kind": ('{ stage = "vector_search", on = "cxl" }', "runs on cpu"),
    "unknown model": ('{ stage = "embed", on = "cpu", model = "gpt-17" }', "gpt-17"),
    "model too big": ('{ stage = "rerank", on = "gpu", model = "llama-3.1-405b" }', "GB of weights"),
}


def _write(tmp_path, stage_line, extra=""):
    text = f"""
[[resource]]
name = "cpu"
kind = "cpu"
cores = 8
[[resource]]
name = "gpu"
kind = "accelerator"
[[resource]]
name = "cxl"
kind = "tier"
tier = "cxl"
[[engine]]
name = "llm"
model = "llama-3.1-8b"
hardware = "h100-sxm"
{extra}
[[client]]
name = "c"
arrival = {{ process = "poisson", rate_per_s = 1.0 }}
input_tokens = {{ dist = "fixed", value = 100 }}
output_tokens = {{ dist = "fixed", value = 10 }}
pipeline = [
  {stage_line},
  {{ stage = "generate", engine = "llm" }},
]
"""
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pipelines_fail_at_load_naming_the_place(tmp_path, case):
    stage_line, message = BAD[case]
    path = _write(tmp_path, stage_line)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert message in str(info.value) and "pipeline" in str(info.value), str(info.value)
    assert str(path) in str(info.value)


def test_cycle_between_resources_is_refused(tmp_path):
    # client c goes cpu -> gpu, client d goes gpu -> cpu: neither resource can be simulated first
    path = _write(tmp_path, '{ stage = "embed", on = "cpu", model = "bge-base-en-v1.5" }, '
                            '{ stage = "rerank", on = "gpu", model = "bge-reranker-base" }')
    text = path.read_text() + """
[[client]]
name = "d"
arrival = { process = "poisson", rate_per_s = 1.0 }
input_tokens = { dist = "fixed", value = 100 }
output_tokens = { dist = "fixed", value = 10 }
pipeline = [
  { stage = "embed", on = "gpu", model = "bge-base-en-v1.5" },
  { stage = "rerank", on = "cpu", model = "bge-reranker-base" },
  { stage = "generate", engine = "llm" },
]
"""
    path.write_text(text)
    with pytest.raises(ConfigError, match="cycle: (cpu -> gpu -> cpu|gpu -> cpu -> gpu)"):
        load_scenario(path)


def test_generate_must_be_last(tmp_path):
    path = _write(tmp_path, '{ stage = "generate", engine = "llm" }, { stage = "embed", on = "cpu", '
                            'model = "bge-base-en-v1.5" }')
    with pytest.raises(ConfigError, match="exactly one generate|must be \"generate\""):
        load_scenario(path)


def test_reasoning_tokens_lengthen_the_output(scenario, runs):
    from hermes_jax.pipeline.stages import Reasoning
    from hermes_jax.sim.scenario import Distribution
    fast, _ = runs
    rag = next(c for c in scenario.clients if c.name == "rag")
    thinking = Reasoning(thinking=Distribution("fixed", value=200.0))
    think = dataclasses.replace(rag, pipeline=rag.pipeline[:-1] + (thinking,) + rag.pipeline[-1:])
    run = simulate_pipeline(dataclasses.replace(scenario, clients=(think,) + tuple(c for c in scenario.clients
                                                                                       if c.name != "rag")))
    a = run.requests[run.requests.client == "rag"]
    b = fast.requests[fast.requests.client == "rag"]
    assert (a.thinking_tokens == 200).all()
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens + 200)
    done = a.status == "finished"
    assert (a.generated[done] == a.output_tokens[done]).all()
    # each thinking token is one more decode step, which reads every weight at least once
    from hermes_jax.hardware.catalog import get_hardware
    from hermes_jax.models.config import get_model
    step = get_model("llama-3.1-8b").weight_bytes("bf16") / float(get_hardware("h100-sxm").params.hbm_bandwidth)
    both = done & (b.status == "finished")
    assert (a.e2e_s[both] - b.e2e_s[both] > 200 * step).all()


def test_utilization_energy_and_cost_add_up(scenario, runs):
    from hermes_jax.hardware.catalog import get_hardware
    from hermes_jax.models.config import get_model
    fast, _ = runs
    s, st, df = fast.summary, fast.extra["stages"], fast.requests
    horizon = scenario.simulation.horizon_s
    usage = s["resources"]
    assert set(usage) == {"llm", "embed-cpu", "search-cpu", "rerank-gpu", "cxl"}
    # a batch-1 pool: busy server-seconds are the jobs' service times (embed: 8 cores, 2 threads a job)
    embed = st[st.resource == "embed-cpu"]
    busy = (embed.finish_s.clip(upper=horizon) - embed.start_s.clip(upper=horizon)).sum()
    assert usage["embed-cpu"]["utilization"] == pytest.approx(busy / (4 * horizon), rel=1e-9)
    # a tier: the share of time its bandwidth moves the fetched prefixes
    chat = df[df.client == "chat"]
    nbytes = chat.cached_tokens * get_model("llama-3.1-8b").kv_bytes_per_token("bf16")
    bandwidth = float(resource_params({r.name: r for r in scenario.resources}["cxl"]).tier_bandwidth[1])
    assert usage["cxl"]["utilization"] == pytest.approx(nbytes.sum() / bandwidth / horizon, rel=1e-4)
    # the engine: idle power all along plus the dynamic part while busy; price per device-hour
    p = get_hardware("h100-sxm").params
    u = usage["llm"]["utilization"]
    assert 0 < u <= 1
    assert usage["llm"]["energy_j"] == pytest.approx((float(p.power_idle_w) + float(p.power_max_w - p.power_idle_w) * u)
                                                     * horizon, rel=1e-6)
    assert usage["llm"]["cost_usd"] == pytest.approx(float(p.price_per_hour) * horizon / 3600)
    assert usage["rerank-gpu"]["cost_usd"] == pytest.approx(float(p.price_per_hour) * horizon / 3600)
    # a CPU pool: its cores at the host CPU's price per core-hour (h100-sxm: a Xeon 8480)
    from hermes_jax.hardware.catalog import default_catalog
    core_price = default_catalog().get("cpu", "xeon-8480", "test")["price_per_core_hour"]
    assert usage["search-cpu"]["cost_usd"] == pytest.approx(24 * core_price * horizon / 3600) and core_price > 0
    total = s["energy"]
    assert total["energy_j"] == pytest.approx(sum(v["energy_j"] for v in usage.values()))
    assert total["j_per_token"] == pytest.approx(total["energy_j"] / df.generated.sum())
    assert total["usd_per_mtok"] * total["tokens_per_usd"] == pytest.approx(1e6)


def test_resource_hardware_overrides_reach_the_stations_and_bad_ones_name_the_field(scenario, tmp_path):
    search = next(r for r in scenario.resources if r.name == "search-cpu")
    base = float(resource_params(search).cpu_core_flops)
    slower = dataclasses.replace(search, hardware_overrides=(("cpu_core_flops", base / 4),))
    assert float(resource_params(slower).cpu_core_flops) == pytest.approx(base / 4)
    bad = RAG_KV.read_text().replace('cores = 24', 'cores = 24\nhardware_overrides = { cpu_core_flops = 0 }')
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match=r"search-cpu.*hardware_overrides.cpu_core_flops.*must be > 0"):
        load_scenario(path)


def test_pipeline_slopes_are_the_least_squares_slope_of_their_runs(scenario):
    """smoothed_slopes on the exact reference, one knob, one scale: the central difference of two
    runs at +-0.05 (the same workload), and of the physical sign (more search FLOP/s, earlier RAG
    answers; more HBM bandwidth, shorter end to end)."""
    from hermes_jax.pipeline.slopes import Knob, smoothed_slopes
    from hermes_jax.sim.differentiable import frame_summaries
    from hermes_jax.sim.simulate import simulate
    from hermes_jax.sim.smoothing import Smoothed
    from hermes_jax.sim.workload import build_workload

    workload = build_workload(scenario)
    knob = Knob("resource", "search-cpu", "cpu_core_flops")
    got = smoothed_slopes(scenario, [knob], Smoothed(scales=(0.05,)), workload, reference=True)
    assert got.runs == 3
    up, down = (frame_summaries(simulate(knob.scaled(scenario, d), workload, reference=True).requests)
                for d in (0.05, -0.05))
    for metric in ("ttft_mean_s", "e2e_mean_s"):
        assert got.slopes[metric][knob.label] == pytest.approx((up[metric] - down[metric]) / 0.1, rel=1e-9)
    assert got.slopes["ttft_mean_s"][knob.label] < 0
    both = smoothed_slopes(scenario, [knob, Knob("engine", "llm", "hbm_bandwidth")], Smoothed(scales=(0.05,)),
                           workload, reference=True)
    assert both.slopes["e2e_mean_s"]["engine.llm.hbm_bandwidth"] < 0
    with pytest.raises(ConfigError, match="no resource 'gpu-pool'"):
        Knob("resource", "gpu-pool", "peak_flops").value(scenario)
    with pytest.raises(ConfigError, match="index 7 outside"):
        Knob("resource", "cxl", "tier_bandwidth", 7)
