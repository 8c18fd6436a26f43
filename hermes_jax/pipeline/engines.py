"""Engine hops of a pipeline: the jobs each hop submits to its engine, one engine run on the merged
jobs of every hop placed on it, and the reply each request sees.

Jobs of a ``whole`` hop, per request, sample s (best-of-n) and round q (multi-round reasoning):
- output: the round's thinking tokens, plus the answer in the last round;
- input: the prompt, grown each round by the previous round's output and the tool's tokens;
- cached: round 0 of sample 0 brings the fetched prefix; other samples share the prompt's KV
  (prefilled once, forked: vLLM's ``n``); round q > 0 finds the previous round's context in the
  engine (prefix reuse), so only the tool's tokens are new;
- rounds after the first are chained with the engine's closed-loop mechanism: round q + 1 arrives
  ``tool_wait_s`` after round q finishes, so the tool wait needs no second engine run.
A ``prefill`` hop submits the prompt with one output token; a ``decode`` hop the prompt plus that
token with the prompt cached (its KV arrived over the link) and the remaining tokens.
Assumption: shared-prefix samples hold their own KV blocks (the simulator does not share blocks),
which over-counts KV memory by (n - 1) x prompt per request.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..sim.scenario import Scenario
from ..sim.workload import Workload


def hop_jobs(hop, rows, ready, prompt, answer, cached, thinking, reasoning) -> pd.DataFrame:
    """Jobs of one engine hop, one row each: request, sample, round (ints); arrival_s (s; inf for a
    later round, sent when the previous one finishes); input_tokens, output_tokens, cached_tokens
    (tokens); think_s (s, the tool wait before the next round); chain (-1, or the (request, sample)
    whose rounds follow one another). ``thinking``: (rows, samples, rounds) tokens. Rows whose
    ``ready`` is NaN (their previous hop never finished) submit nothing."""
    ok = np.isfinite(ready)
    rows, ready, thinking = rows[ok], ready[ok], thinking[ok]
    p, a, c = prompt[rows], answer[rows], cached[rows]
    if hop.role == "prefill":
        return _frame(rows, 0, 0, ready, p, np.ones_like(p), c)
    if hop.role == "decode":
        out = a + thinking.sum(axis=(1, 2)) - 1
        return _frame(rows, 0, 0, ready, p + 1, out, p)
    if hop.attempt > 0:   # an escalation prefills afresh on another model
        c = np.zeros_like(c)
    samples, rounds = thinking.shape[1:]
    tool_wait = reasoning.tool_wait_s if reasoning else 0.0
    tool_tokens = reasoning.tool_tokens if reasoning else 0
    frames = []
    for s in range(samples):
        inputs, context_cached = p.copy(), (c if s == 0 else np.maximum(c, p - 1))
        for q in range(rounds):
            out = thinking[:, s, q] + (a if q == rounds - 1 else 0)
            frames.append(_frame(rows, s, q, ready if q == 0 else np.full(len(rows), np.inf), inputs, out,
                                 context_cached, tool_wait if q < rounds - 1 else 0.0))
            context_cached = inputs + out - 1
            inputs = inputs + out + tool_tokens
    jobs = pd.concat(frames, ignore_index=True)
    if rounds > 1:   # one closed-loop "user" per (request, sample); rounds follow one another
        jobs["chain"] = jobs.request.to_numpy() * samples + jobs["sample"].to_numpy()
    return jobs


def _frame(rows, sample, round_, arrival, inputs, outputs, cached, think=0.0) -> pd.DataFrame:
    return pd.DataFrame({"request": rows, "sample": sample, "round": round_, "arrival_s": arrival,
                         "input_tokens": inputs, "output_tokens": outputs,
                         "cached_tokens": np.minimum(cached, inputs - 1), "think_s": think, "chain": -1})


def run_engine(scenario: Scenario, name: str, jobs: pd.DataFrame, client_of: np.ndarray, reference: bool,
               progress: bool):
    """Simulate engine ``name`` on ``jobs`` (every hop's, merged); returns the jobs with the engine's
    columns (admit_s, first_token_s, finish_s, status, ...; NaN and "unfinished" for jobs never
    issued before the horizon) and the engine's Results."""
    from ..sim.reference import simulate_reference
    from ..sim.simulate import simulate_engines
    clients = tuple(dataclasses.replace(c, engine=name, pipeline=()) for c in scenario.clients)
    sub = Scenario(scenario.simulation, (scenario.engine(name),), clients, scenario.source)
    jobs = jobs.reset_index(drop=True)
    order = np.argsort(jobs.arrival_s.to_numpy(), kind="stable")
    position = np.empty(len(jobs), np.int64)
    position[order] = np.arange(len(jobs))
    sorted_jobs = jobs.iloc[order].reset_index(drop=True)
    closed = {}
    if (jobs.chain >= 0).any():
        nxt = _next_in_chain(jobs)
        nxt_sorted = nxt[order]
        _, user = np.unique(sorted_jobs.chain.to_numpy(), return_inverse=True)
        closed = dict(next_request=np.where(nxt_sorted >= 0, position[np.maximum(nxt_sorted, 0)], -1),
                      think_s=sorted_jobs.think_s.to_numpy(float),
                      user=np.where(sorted_jobs.chain >= 0, user, -1).astype(np.int64))
    workload = Workload(arrival_s=sorted_jobs.arrival_s.to_numpy(float),
                        input_tokens=sorted_jobs.input_tokens.to_numpy(np.int64),
                        output_tokens=sorted_jobs.output_tokens.to_numpy(np.int64),
                        client=client_of[sorted_jobs.request.to_numpy()], client_names=tuple(c.name for c in clients),
                        cached_tokens=sorted_jobs.cached_tokens.to_numpy(np.int64), **closed)
    result = simulate_reference(sub, workload) if reference else simulate_engines(sub, workload, progress=progress)
    got = result.requests.set_index("request")
    columns = ["arrival_s", "replica", "admit_s", "first_token_s", "finish_s", "itl_max_s", "generated", "preemptions", "status",
               "reject_reason"]
    engine_cols = got.reindex(position)[columns].reset_index(drop=True)   # job order; missing: never issued
    engine_cols["arrival_s"] = engine_cols.arrival_s.fillna(jobs.arrival_s)   # a later round: when it was sent
    engine_cols["status"] = engine_cols.status.fillna("unfinished")
    engine_cols["reject_reason"] = engine_cols.reject_reason.fillna("")
    engine_cols[["generated", "preemptions"]] = engine_cols[["generated", "preemptions"]].fillna(0)
    engine_cols["replica"] = engine_cols.replica.fillna(-1)
    out = pd.concat([jobs.drop(columns=[c for c in columns if c in jobs]), engine_cols], axis=1)
    return out, result


def _next_in_chain(jobs: pd.DataFrame) -> np.ndarray:
    """Index of the same chain's next round (-1 for the last round and unchained jobs)."""
    nxt = np.full(len(jobs), -1, np.int64)
    chained = jobs[jobs.chain >= 0]
    key = {(c, r): i for i, c, r in zip(chained.index, chained.chain, chained["round"])}
    for i, c, r in zip(chained.index, chained.chain, chained["round"]):
        nxt[i] = key.get((c, r + 1), -1)
    return nxt


def replies(jobs: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per request (0..n-1), what the user sees from its engine jobs (every hop's, with columns
    ``attempt`` and ``role``). Only the last attempt's jobs form the reply (a cascade discards the
    earlier answers); a disaggregated prefill and decode are one stream; a stream is one sample's
    round. TTFT: the earliest first token; E2E: the last finish; TPOT: time between consecutive
    tokens within streams, token-weighted; status: rejected if any job was, finished if all were."""
    out = pd.DataFrame(index=np.arange(n))
    if not len(jobs):
        return out
    last = jobs.groupby("request").attempt.transform("max")
    reply = jobs[jobs.attempt == last].assign(open=lambda f: f.finish_s.isna())   # built-in aggregations only
    streams = reply.groupby(["request", "sample", "round"]).agg(
        first=("first_token_s", "min"), finish=("finish_s", "max"), out=("output_tokens", "sum"),
        unfinished=("open", "any"))
    streams["span"] = np.where(streams.out > 1, streams.finish - streams["first"], 0.0)
    streams["steps"] = np.maximum(streams.out - 1, 0)
    per = streams.groupby("request").agg(first_token_s=("first", "min"), finish_s=("finish", "max"),
                                         span=("span", "sum"), steps=("steps", "sum"),
                                         unfinished=("unfinished", "any"))
    first_attempt = jobs[jobs.attempt == 0]
    out["admit_s"] = first_attempt.groupby("request").admit_s.min()
    out["first_token_s"], out["finish_s"] = per.first_token_s, per.finish_s
    out.loc[per.index[per.unfinished], "finish_s"] = np.nan
    out["tpot_s"] = pd.Series(np.where(per.steps > 0, per.span / np.maximum(per.steps, 1), 0.0), index=per.index)
    by = jobs.groupby("request")
    out["itl_max_s"] = reply.groupby("request").itl_max_s.max()
    out["generated"] = by.generated.sum()
    out["job_output_tokens"] = by.output_tokens.sum()
    out["preemptions"] = by.preemptions.sum()
    out["replica"] = first_attempt.groupby("request").replica.first()
    rejected = jobs[jobs.status == "rejected"].groupby("request").reject_reason.first()
    done = (jobs.status == "finished").groupby(jobs.request).all()
    status = pd.Series("unfinished", index=out.index, dtype=object)
    status[done[done].index] = "finished"
    status[rejected.index] = "rejected"
    out["status"] = status
    out["reject_reason"] = rejected.reindex(out.index).fillna("")
    return out


__all__ = ["hop_jobs", "run_engine", "replies"]
