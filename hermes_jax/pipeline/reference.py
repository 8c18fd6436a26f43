"""Event-driven reference for the pipeline's shared resources: plain Python, a heap, float64.

Written independently of ``stations`` (no shared code): events are popped in time order and each
resource reacts to them as the real system would. The tests compare the two on random inputs.
"""

from __future__ import annotations

import heapq

import numpy as np

ARRIVE, FREE = 0, 1   # at equal times an arrival is queued before a server picks its next batch


def batch_servers_events(release, size, service, servers: int, max_batch: int = 1):
    """(start, finish) per job: FCFS queue; a free server takes up to ``max_batch`` waiting jobs."""
    release, size = np.asarray(release, float), np.asarray(size, float)
    n = len(release)
    start, finish = np.full(n, np.nan), np.full(n, np.nan)
    events = [(release[i], ARRIVE, i) for i in range(n)]
    heapq.heapify(events)
    waiting: list[int] = []
    idle = servers
    seq = n

    def dispatch(now):
        nonlocal idle, seq
        while idle and waiting:
            batch = sorted(waiting, key=lambda i: (release[i], i))[:max_batch]
            for i in batch:
                waiting.remove(i)
            done = now + float(service(len(batch), float(size[batch].sum())))
            start[batch], finish[batch] = now, done
            idle -= 1
            seq += 1
            heapq.heappush(events, (done, FREE, seq))

    while events:
        now, kind, who = heapq.heappop(events)
        if kind == ARRIVE:
            waiting.append(who)
            # serve everyone who arrives at this same instant together
            while events and events[0][0] == now and events[0][1] == ARRIVE:
                waiting.append(heapq.heappop(events)[2])
        else:
            idle += 1
        dispatch(now)
    return start, finish


def shared_events(release, work, capacity: float):
    """Finish per job under processor sharing: each of n jobs present progresses at min(1, c / n)."""
    release, work = np.asarray(release, float), np.asarray(work, float)
    n = len(release)
    finish = np.full(n, np.nan)
    arrivals = sorted(range(n), key=lambda i: (release[i], i))
    present: dict[int, float] = {}   # job -> work left
    now, k = 0.0, 0
    while k < n or present:
        rate = min(1.0, capacity / len(present)) if present else 0.0
        next_arrival = release[arrivals[k]] if k < n else np.inf
        next_departure = now + min(present.values()) / rate if present else np.inf
        t = min(next_arrival, next_departure)
        for i in present:
            present[i] -= rate * (t - now)
        now = t
        for i in [i for i, left in present.items() if left <= 1e-12 * max(1.0, work[i])]:
            finish[i] = now
            del present[i]
        while k < n and release[arrivals[k]] <= now:
            present[arrivals[k]] = work[arrivals[k]]
            k += 1
        for i in [i for i, left in present.items() if left <= 0.0]:   # zero-work jobs leave on arrival
            finish[i] = now
            del present[i]
    return finish
