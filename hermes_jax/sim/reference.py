"""Exact event-driven reference simulator: plain Python and NumPy, a heap of events, float64.

Same serving semantics as the time-stepped simulator (hermes_jax.sim.engine) but no time steps:
requests are routed at their exact arrival times with the replicas' state at that instant, and each
replica decides and runs its next iteration when it becomes free. It shares only the service-time
kernel (``iteration_cost``, called once per iteration) and the scheduler objects, so the tests and
benchmarks can measure the error that fixed steps introduce.
"""

from __future__ import annotations

import heapq
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..hardware.params import HardwareParams
from ..kernels.transfer import tier_transfer_time
from .build import REJECT_REASONS, admission_window, build_group, iteration_seconds, reject_reasons, swap_config
from .metrics import summarize
from .scenario import Scenario
from .schedulers import SCHEDULERS
from .simulate import Results, _group_rows, derived_columns, issued, request_frame
from .workload import Workload, build_workload

ARRIVAL, FREE = 0, 1   # at equal times an arrival is seen by an engine that becomes free then


class _Replica:
    def __init__(self, slots: int):
        self.req = np.full(slots, -1)
        self.prompt_left = np.zeros(slots, np.int64)
        self.context = np.zeros(slots, np.int64)
        self.generated = np.zeros(slots, np.int64)
        self.target = np.zeros(slots, np.int64)
        self.order = np.zeros(slots, np.int64)
        self.alloc = np.zeros(slots, np.int64)
        self.queue: list[tuple[int, int]] = []   # (request, output tokens already sampled or -1)
        self.admitted = 0
        self.busy = False


def _blocks(tokens, size):
    return -(-tokens // size)


def _run_group(group, scenario, workload, rows, df):
    e = group.engine
    sched = SCHEDULERS[e.scheduler]
    B, bs, budget, M = e.max_batch_size, e.block_size, e.max_batch_tokens, admission_window(e)
    horizon = scenario.simulation.horizon_s
    arrival = workload.arrival_s[rows].copy()   # closed-loop rounds get theirs when the previous reply comes
    closed = workload.closed_loop
    if closed:
        local = np.full(len(workload), -1)
        local[rows] = np.arange(len(rows))
        nxt = np.where(workload.next_request[rows] >= 0, local[np.maximum(workload.next_request[rows], 0)], -1)
        think = workload.think_s[rows]

    def send_next(i: int, t: float):
        """Request i was answered or rejected at t: its user sends the next one a think time later."""
        if closed and nxt[i] >= 0:
            j = int(nxt[i])
            arrival[j] = t + think[i]
            heapq.heappush(events, (float(arrival[j]), ARRIVAL, j, j))
    inputs, outputs = workload.input_tokens[rows], workload.output_tokens[rows]
    priority = np.array([c.priority for c in scenario.clients])[workload.client[rows]]
    reasons = reject_reasons(group, workload, np.ones(len(workload), bool))[rows]
    n = len(rows)
    out = {k: np.full(n, np.nan) for k in ("admit", "first", "finish")}
    replica_of, preempt = np.full(n, -1), np.zeros(n, np.int64)
    swap = swap_config(group)
    swap_tokens, kv_token_bytes = swap["swap_tokens"], swap["kv_token_bytes"]

    cached = np.zeros(n, np.int64) if workload.cached_tokens is None else workload.cached_tokens[rows]

    def waiting(i, history):
        """(output tokens, tokens to prefill, KV tokens to allocate, KV tokens present at admission,
        KV tokens swapped back) of a queue entry: history -1 new (its cached prefix is present),
        g >= 0 recompute after g tokens, -(g + 2) swapped out after g tokens."""
        if history <= -2:
            done = -history - 2
            back = int(inputs[i]) + done - 1
            return done, 0, back, back, back
        done = max(history, 0)
        present = int(cached[i]) if history == -1 else 0
        return done, int(inputs[i]) + done - present, int(inputs[i]) + done, present, 0
    last_token, max_gap = np.full(n, np.nan), np.zeros(n)
    generated_final = np.zeros(n, np.int64)
    rejected = reasons > 0
    replicas = [_Replica(B) for _ in range(e.replicas)]
    events = [(float(arrival[i]), ARRIVAL, i, i) for i in range(n) if np.isfinite(arrival[i])]
    heapq.heapify(events)
    seq = n
    routed = 0

    def start(r: int, now: float):
        nonlocal seq
        rep = replicas[r]
        capacity, params = group.replica_kv[r], group.replica_hw[r]
        active = rep.req >= 0
        moved = 0   # KV tokens swapped in or out before this iteration
        # admission: FCFS prefix of the queue that fits slots, KV blocks and the token budget
        cand = rep.queue[:M]
        if cand and sched.may_admit(np, int(active.sum())):
            order = range(len(cand))
            if e.queue_order == "priority":   # by priority, then queue position; all queued have arrived
                order = sorted(order, key=lambda k: (priority[cand[k][0]], k))
            free_slots = B - int(active.sum())
            free_blocks = capacity - int(_blocks(rep.alloc, bs).sum())
            prefill_now = int(np.where(active, rep.prompt_left, 0).sum())
            chosen, blocks, tokens = [], 0, 0
            for k in order:
                i, history = cand[k]
                _, prompt, alloc, _, _ = waiting(i, history)
                blocks += int(_blocks(alloc, bs))
                tokens += int(sched.admission_tokens(np, prompt))
                if len(chosen) >= free_slots or blocks > free_blocks or prefill_now + tokens > budget:
                    break
                chosen.append(k)
            empty = np.flatnonzero(~active)
            for n, k in enumerate(chosen):
                i, history = cand[k]
                b = empty[n]
                done, prompt, alloc, present, swapped = waiting(i, history)
                rep.req[b], rep.prompt_left[b], rep.context[b] = i, prompt, present
                rep.generated[b], rep.target[b], rep.order[b], rep.alloc[b] = done, outputs[i], rep.admitted + n, alloc
                moved += swapped
                if history == -1:
                    out["admit"][i] = now
            taken = set(chosen)
            rep.queue = [entry for k, entry in enumerate(cand) if k not in taken] + rep.queue[len(cand):]
            rep.admitted += len(chosen)
        active = rep.req >= 0
        if not active.any():
            rep.busy = False
            return
        new = sched.compose(np, rep.prompt_left, active, rep.order, budget)
        need = np.where(active, np.maximum(rep.alloc, rep.context + new), 0)
        by_age = np.argsort(np.where(active, rep.order, 2**30), kind="stable")
        keep = np.zeros(B, bool)
        keep[by_age] = np.cumsum(_blocks(need, bs)[by_age]) <= capacity
        evict = active & ~keep
        if evict.any():   # preempt the newest; the oldest evicted goes first in the queue
            victims = [b for b in by_age if evict[b]]
            used = sum(waiting(i, h)[4] for i, h in rep.queue if h <= -2)
            entries, ahead = [], 0
            for b in victims:   # swap out while the space holds the KV of requests with output, else recompute
                held = int(rep.context[b]) if rep.generated[b] > 0 and swap_tokens else 0
                ahead += held
                swap = held > 0 and used + ahead <= swap_tokens
                moved += held if swap else 0
                entries.append((int(rep.req[b]), -int(rep.generated[b]) - 2 if swap else int(rep.generated[b])))
            rep.queue = entries + rep.queue
            for b in victims:
                preempt[rep.req[b]] += 1
                rep.req[b] = -1
            active = rep.req >= 0
            new = np.where(active, new, 0)
        rep.alloc = np.where(active, np.maximum(rep.alloc, rep.context + new), 0)
        logits = active & (new > 0) & (rep.prompt_left <= new)
        # NumPy arguments go to the compiled kernel as they are (a jnp conversion of each costs more
        # than the kernel)
        tau = float(iteration_seconds(group.spec, params, new.astype(float), rep.context.astype(float),
                                      logits.astype(float)))
        if moved:
            tau += float(tier_transfer_time(params, "host_dram", moved * kv_token_bytes))
        end = now + tau
        first = logits & (rep.generated == 0)
        out["first"][rep.req[first]] = end
        later = rep.req[logits & (rep.generated > 0)]
        max_gap[later] = np.maximum(max_gap[later], end - last_token[later])
        last_token[rep.req[logits]] = end
        rep.generated = rep.generated + logits
        finished = logits & (rep.generated >= rep.target)
        out["finish"][rep.req[finished]] = end
        for i in rep.req[finished]:
            send_next(int(i), end)
        generated_final[rep.req[finished]] = rep.target[finished]
        rep.req = np.where(finished, -1, rep.req)
        rep.alloc = np.where(finished, 0, rep.alloc)
        rep.prompt_left = np.maximum(rep.prompt_left - new, 0)
        rep.context = rep.context + new
        rep.busy = True
        seq += 1
        heapq.heappush(events, (end, FREE, seq, r))

    while events:
        time, kind, _, who = heapq.heappop(events)
        if time >= horizon:
            break
        if kind == ARRIVAL:
            # requests arriving at the same instant (best-of-n samples, a burst) are queued together
            # before an idle replica composes its next batch
            batch = [who]
            while events and events[0][0] == time and events[0][1] == ARRIVAL:
                batch.append(heapq.heappop(events)[3])
            touched = []
            for who in batch:
                if rejected[who]:
                    send_next(who, time)
                    continue
                if e.router == "round_robin":
                    r = routed % e.replicas
                elif e.router == "least_outstanding":
                    r = int(np.argmin([(rep.req >= 0).sum() + len(rep.queue) for rep in replicas]))
                else:
                    r = int(np.argmin([_blocks(rep.alloc, bs).sum() / group.replica_kv[k]
                                       for k, rep in enumerate(replicas)]))
                routed += 1
                replica_of[who] = r
                replicas[r].queue.append((who, -1))
                touched.append(r)
            for r in dict.fromkeys(touched):
                if not replicas[r].busy:
                    start(r, time)
        else:
            start(who, time)
    for rep in replicas:   # requests still in a batch at the horizon
        live = rep.req >= 0
        generated_final[rep.req[live]] = rep.generated[live]
        for i, history in rep.queue:
            generated_final[i] = waiting(i, history)[0]
    status = np.where(np.isfinite(out["finish"]), "finished", "unfinished").astype(object)
    status[rejected] = "rejected"
    df.loc[rows, "replica"] = replica_of
    df.loc[rows, "arrival_s"] = arrival
    df.loc[rows, "admit_s"] = out["admit"]
    df.loc[rows, "first_token_s"] = out["first"]
    df.loc[rows, "finish_s"] = out["finish"]
    df.loc[rows, "itl_max_s"] = np.where(np.isfinite(out["finish"]), max_gap, np.nan)
    df.loc[rows, "preemptions"] = preempt
    df.loc[rows, "generated"] = generated_final
    df.loc[rows, "status"] = status
    df.loc[rows, "reject_reason"] = np.array(REJECT_REASONS, dtype=object)[reasons]


def simulate_reference(scenario: Scenario, workload: Workload | None = None,
                       params: Mapping[str, HardwareParams] | None = None) -> Results:
    """``params``: per engine name, hardware parameters that replace its replicas' (KV capacity
    follows), e.g. to measure a metric's slope against the exact simulation."""
    workload = workload or build_workload(scenario)
    params = dict(params or {})
    unknown = set(params) - {e.name for e in scenario.engines}
    if unknown:
        raise ConfigError(f"simulate_reference params: no engine named {sorted(unknown)}")
    df = request_frame(workload, scenario)
    for entry in scenario.engines:
        rows = _group_rows(scenario, workload, entry.name)
        if rows.size:
            group = build_group(entry)
            if entry.name in params:
                group = group.with_params(params[entry.name])
            # float64 kernels where JAX allows it; event times are Python floats either way
            precise = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
            group = group.astype(precise)
            _run_group(group, scenario, workload, rows, df)
    df = derived_columns(issued(df, scenario))
    return Results(df, pd.DataFrame(), summarize(df, pd.DataFrame(), scenario))
