"""Routing, cascades, multi-round reasoning, best-of-n and disaggregated prefill/decode: the
time-stepped run against the event-driven reference on a scenario with every kind (and one client
that combines every stage), and what each does to the requests' jobs."""

from pathlib import Path

import numpy as np
import pytest

from hermes_jax.errors import ConfigError
from hermes_jax.hardware.catalog import default_catalog
from hermes_jax.models.config import get_model
from hermes_jax.pipeline.run import simulate_pipeline
from hermes_jax.sim import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "hermes_jax" / "scenarios" / "routing_reasoning.toml"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO, ["simulation.horizon_s=20"])


@pytest.fixture(scope="module")
def runs(scenario):
    return simulate_pipeline(scenario), simulate_pipeline(scenario, reference=True)


def test_matches_reference_per_request_job_and_stage(runs):
    fast, exact = runs
    a, b = fast.requests, exact.requests
    assert (a.status == b.status).all() and (a.status == "finished").sum() > 100
    for col in ("engine_arrival_s", "admit_s", "first_token_s", "finish_s", "ttft_s", "tpot_s"):
        np.testing.assert_allclose(a[col], b[col], atol=1e-5, err_msg=col)
    ja, jb = fast.extra["jobs"], exact.extra["jobs"]
    assert len(ja) == len(jb)
    for col in ("arrival_s", "admit_s", "first_token_s", "finish_s"):   # rounds: arrival follows a finish
        np.testing.assert_allclose(ja[col], jb[col], atol=1e-5, err_msg=col)
    sa, sb = fast.extra["stages"], exact.extra["stages"]
    kinds = sa.stage.str.split(":").str[1].str.split("@").str[0]
    assert set(kinds) == {"embed", "vector_search", "rerank", "route", "kv_fetch", "generate", "prefill",
                          "kv_transfer", "decode"}
    for kind in set(kinds):   # error per stage kind
        part = (kinds == kind).to_numpy()
        for col in ("start_s", "finish_s"):
            np.testing.assert_allclose(sa[part][col], sb[part][col], atol=1e-5, err_msg=f"{kind} {col}")


def test_routing_policies(scenario, runs):
    fast, _ = runs
    df, jobs = fast.requests, fast.extra["jobs"]
    routed = df[df.client == "routed"]
    share = (routed.engine == "llama8b").mean()
    n = len(routed)
    assert abs(share - 0.7) < 4 * np.sqrt(0.21 / n), (share, n)
    agent = df[df.client == "agent"]   # prompt_length: <= 1500 tokens to llama8b, longer to qwen7b
    assert ((agent.input_tokens <= 1500) == (agent.engine == "llama8b")).all()
    cascade = jobs[jobs.request.isin(df[df.client == "cascade"].request)]
    first, second = cascade[cascade.attempt == 0], cascade[cascade.attempt == 1]
    assert (first.engine == "llama8b").all() and (second.engine == "qwen7b").all()
    assert 0.1 < len(second) / len(first) < 0.55
    # an escalation arrives when the first answer is done and prefills the whole prompt again
    merged = second.merge(first, on="request", suffixes=("", "_first"))
    np.testing.assert_allclose(merged.arrival_s, merged.finish_s_first, atol=1e-9)
    assert (merged.cached_tokens == 0).all() and (merged.input_tokens == merged.input_tokens_first).all()
    reply = df.set_index("request").loc[merged.request]
    done = reply.status == "finished"
    np.testing.assert_allclose(reply.finish_s[done], merged.finish_s[done.to_numpy()])
    assert (reply.engine == "qwen7b").all()


def test_disaggregated_prefill_and_decode(scenario, runs):
    fast, _ = runs
    df, jobs, stages = fast.requests, fast.extra["jobs"], fast.extra["stages"]
    split = df[(df.client == "split") & (df.status == "finished")].set_index("request")
    pre = jobs[jobs.role == "prefill"].set_index("request").loc[split.index]
    dec = jobs[jobs.role == "decode"].set_index("request")
    assert (pre.output_tokens == 1).all() and (pre.engine == "prefill").all()
    assert (dec.engine == "decode").all() and (dec.cached_tokens == dec.input_tokens - 1).all()
    np.testing.assert_allclose(split.first_token_s, pre.first_token_s)
    many = split[split.answer_tokens > 1]
    assert set(many.index) <= set(dec.index) and not set(split[split.answer_tokens == 1].index) & set(dec.index)
    np.testing.assert_array_equal(dec.loc[many.index].output_tokens, many.answer_tokens - 1)
    # the prompt's KV crosses the link: at least bytes / bandwidth, plus the link latency
    link = default_catalog().get("link", "roce-400g", "test")
    per_token = get_model("llama-3.1-8b").kv_bytes_per_token("bf16")
    move = stages[stages.stage.str.endswith("kv_transfer")].set_index("request").loc[many.index]
    assert (move.finish_s - move.start_s >= many.input_tokens * per_token / link["bandwidth"] + link["latency"] - 1e-9).all()
    np.testing.assert_allclose(move.ready_s, pre.loc[many.index].finish_s)
    np.testing.assert_allclose(dec.loc[many.index].arrival_s, move.finish_s)
    assert (split.engine == "prefill>decode").all()


def test_rounds_and_samples(scenario, runs):
    fast, _ = runs
    thinker = next(c for c in scenario.clients if c.name == "thinker")
    reasoning = thinker.pipeline[0]
    df, jobs = fast.requests, fast.extra["jobs"]
    mine = jobs[jobs.request.isin(df[df.client == "thinker"].request)]
    assert set(mine["sample"]) == {0, 1} and set(mine["round"]) == {0, 1, 2}
    for (request, sample), chain in mine.groupby(["request", "sample"]):
        chain = chain.sort_values("round")
        first = chain.iloc[0]
        assert first.cached_tokens == (first.input_tokens - 1 if sample else 0)   # the samples share the prefix
        for prev, nxt in zip(chain.iloc[:-1].itertuples(), chain.iloc[1:].itertuples()):
            assert nxt.input_tokens == prev.input_tokens + prev.output_tokens + reasoning.tool_tokens
            assert nxt.cached_tokens == prev.input_tokens + prev.output_tokens - 1
            sent = prev.finish_s + reasoning.tool_wait_s   # the tool runs between rounds
            if sent < scenario.simulation.horizon_s:
                assert nxt.arrival_s == pytest.approx(sent, abs=1e-5)
            else:   # not sent before the horizon: reported, not dropped
                assert np.isinf(nxt.arrival_s) and nxt.status == "unfinished"
    done = df[(df.client == "thinker") & (df.status == "finished")].set_index("request")
    assert len(done) >= 3
    ends = mine.groupby("request").finish_s.max().loc[done.index]
    np.testing.assert_allclose(done.finish_s, ends)   # best-of-n: the reply waits for the last sample
    answers = mine[mine["round"] == 2].groupby("request").output_tokens.sum() - 2 * 100
    assert (done.thinking_tokens >= answers.loc[done.index]).all()
    assert (done.generated == done.output_tokens).all()


def _write(tmp_path, pipeline, extra_resources=""):
    text = f"""
[[resource]]
name = "cpu"
kind = "cpu"
cores = 8
[[resource]]
name = "net"
kind = "link"
link = "roce-400g"
{extra_resources}
[[engine]]
name = "a"
model = "llama-3.1-8b"
hardware = "h100-sxm"
[[engine]]
name = "b"
model = "qwen2.5-7b"
hardware = "h100-sxm"
[[engine]]
name = "c"
model = "llama-3.1-8b"
hardware = "h100-sxm"
[[client]]
name = "x"
arrival = {{ process = "poisson", rate_per_s = 1.0 }}
input_tokens = {{ dist = "fixed", value = 100 }}
output_tokens = {{ dist = "fixed", value = 10 }}
pipeline = [{pipeline}]
"""
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


ROUTE = '{ stage = "route", on = "cpu", model = "bge-base-en-v1.5", '
BAD = {
    "route then named engine": (ROUTE + 'to = ["a", "b"], weights = [0.5, 0.5] }, { stage = "generate", engine = "a" }',
                                "generate names no engine"),
    "route to unknown engine": (ROUTE + 'to = ["a", "zz"], weights = [0.5, 0.5] }, { stage = "generate" }', "'zz'"),
    "weights not summing to 1": (ROUTE + 'to = ["a", "b"], weights = [0.5, 0.6] }, { stage = "generate" }', "weights"),
    "thresholds count": (ROUTE + 'to = ["a", "b"], policy = "prompt_length", thresholds = [1, 2] }, '
                         '{ stage = "generate" }', "thresholds"),
    "bad policy": (ROUTE + 'to = ["a", "b"], policy = "vibes" }, { stage = "generate" }', "'vibes' is not allowed"),
    "generate without engine": ('{ stage = "generate" }', "needs an engine"),
    "same prefill and decode": ('{ stage = "generate", prefill_engine = "a", decode_engine = "a", kv_link = "net" }',
                                "must differ"),
    "disaggregated across models": ('{ stage = "generate", prefill_engine = "a", decode_engine = "b", kv_link = "net" }',
                                    "different models"),
    "kv link not a link": ('{ stage = "generate", prefill_engine = "a", decode_engine = "c", kv_link = "cpu" }',
                           "not a link or tier"),
    "rounds with disaggregation": ('{ stage = "reasoning", thinking = { dist = "fixed", value = 5 }, rounds = 2 }, '
                                   '{ stage = "generate", prefill_engine = "a", decode_engine = "c", kv_link = "net" }',
                                   "multi-round"),
    "fetch before a route across models": ('{ stage = "kv_fetch", on = "net" }, ' + ROUTE +
                                           'to = ["a", "b"], weights = [0.5, 0.5] }, { stage = "generate" }',
                                           "place kv_fetch after the route"),
    "two stages in a row on one pool": ('{ stage = "embed", on = "cpu", model = "bge-base-en-v1.5" }, ' + ROUTE +
                                        'to = ["a", "c"], weights = [0.5, 0.5] }, { stage = "generate" }',
                                        "cycle: cpu -> cpu"),
    "pool shared with other threads": ('{ stage = "embed", on = "cpu", model = "bge-base-en-v1.5", threads = 2 }, '
                                       '{ stage = "rerank", on = "cpu2", model = "bge-reranker-base" }, '
                                       '{ stage = "generate", engine = "a" }', "shared by different stages"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_generation_setups_fail_at_load(tmp_path, case):
    pipeline, message = BAD[case]
    extra = ""
    if case == "pool shared with other threads":   # a second client puts a 1-thread stage on cpu
        extra = '[[resource]]\nname = "cpu2"\nkind = "cpu"\ncores = 4\n'
    path = _write(tmp_path, pipeline, extra)
    if case == "pool shared with other threads":
        path.write_text(path.read_text() + """
[[client]]
name = "y"
arrival = { process = "poisson", rate_per_s = 1.0 }
input_tokens = { dist = "fixed", value = 100 }
output_tokens = { dist = "fixed", value = 10 }
pipeline = [{ stage = "embed", on = "cpu", model = "bge-base-en-v1.5" }, { stage = "generate", engine = "a" }]
""")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert message in str(info.value), str(info.value)
    assert str(path) in str(info.value)


def test_heterogeneous_hardware_in_one_run():
    """GPU prefill with decode on a memory-centric part, a TPU engine and a CPU-only engine, together;
    each against the reference, and each bound by its own memory."""
    from hermes_jax.hardware.catalog import get_hardware
    path = SCENARIO.with_name("heterogeneous.toml")
    scenario = load_scenario(path, ["simulation.horizon_s=15"])
    fast, exact = simulate_pipeline(scenario), simulate_pipeline(scenario, reference=True)
    a, b = fast.requests, exact.requests
    assert (a.status == b.status).all() and set(a[a.status == "finished"].client) == {"interactive", "bulk", "local"}
    for col in ("admit_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(a[col], b[col], atol=1e-5, err_msg=col)
    kinds = {e.name: get_hardware(e.hardware).spec.kind for e in scenario.engines}
    assert kinds == {"prefill-gpu": "gpu", "decode-pim": "pim", "tpu": "asic", "cpu": "cpu"}
    done = a[a.status == "finished"]
    # a decode step reads every weight: at least weight bytes / memory bandwidth per token
    for client, model, hardware in (("local", "phi-2", "xeon-6980p-cpu"), ("interactive", "llama-3.1-8b", "pim-hbm")):
        floor = get_model(model).weight_bytes("bf16") / float(get_hardware(hardware).params.hbm_bandwidth)
        assert (done[done.client == client].tpot_s > floor).all(), client
    assert set(fast.summary["resources"]) == {"prefill-gpu", "decode-pim", "tpu", "cpu", "kv-net"}


def test_servegen_reasoning_lengths_match_the_published_statistics():
    """calibration/servegen_thinking.py's shipped samples against the data's own README: mean
    output 1,527 tokens, mean reason ratio 0.70 (about 1,070 thinking tokens per request)."""
    from hermes_jax.sim.workload import read_lengths
    data = SCENARIO.parent / "data"
    thinking = read_lengths(str(data / "deepseek_r1_thinking.txt"))
    answer = read_lengths(str(data / "deepseek_r1_answer.txt"))
    assert len(thinking) == len(answer) == 20000
    assert (thinking + answer).mean() == pytest.approx(1527, rel=0.05)
    assert thinking.mean() == pytest.approx(1070, rel=0.10)
    assert np.percentile(thinking, 99) > 10 * np.median(thinking)   # a long tail: the p99 request thinks 10x+
    scenario = load_scenario(SCENARIO.with_name("reasoning_r1.toml"))   # the shipped scenario reads them
    assert scenario.clients[0].pipeline[0].thinking.path.endswith("deepseek_r1_thinking.txt")
