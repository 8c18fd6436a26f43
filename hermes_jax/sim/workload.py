"""Requests for a scenario: synthetic arrival processes and length distributions, or traces.

Everything here is NumPy on the host; the simulator receives a ``Workload`` of arrival-sorted arrays.
Arrival processes: Poisson, Gamma (inter-arrival coefficient of variation ``cv``; cv = 1 is Poisson,
cv > 1 bursty) and deterministic. Lengths: fixed, uniform (integers, inclusive), lognormal (median,
sigma of the log), empirical (a file of lengths, sampled with replacement). Trace readers keep
every column they know (Mooncake ``hash_ids`` are kept for prefix reuse) and check every row:
a bad value is reported with its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..tomlio import json_lines
from .budget import check_expected_requests
from .scenario import Client, Distribution, Scenario


@dataclass
class Workload:
    """Arrival-sorted requests. Arrays have shape (N,)."""

    arrival_s: np.ndarray       # s since the start, float64, non-decreasing
    input_tokens: np.ndarray    # tokens, int
    output_tokens: np.ndarray   # tokens, int >= 1
    client: np.ndarray          # index into client_names
    client_names: tuple[str, ...]
    hash_ids: list | None = None   # per request list of prefix-block hashes (Mooncake), else None
    # closed-loop clients: request i's reply (or rejection) at time t makes next_request[i] arrive at
    # t + think_s[i]; those requests have arrival_s = inf until then. -1 / 0 for open-loop requests.
    next_request: np.ndarray | None = None   # (N,) int
    think_s: np.ndarray | None = None        # (N,) s
    user: np.ndarray | None = None           # (N,) int, closed-loop user id (global), -1 open loop
    # prompt tokens whose KV arrives with the request (fetched from a tier, or sent by a prefill
    # engine); the engine prefills only the rest. None: nothing cached.
    cached_tokens: np.ndarray | None = None  # (N,) int, 0 <= cached < input_tokens

    @property
    def closed_loop(self) -> bool:
        return self.user is not None and bool((self.user >= 0).any())

    def __len__(self) -> int:
        return len(self.arrival_s)


def arrivals(process: str, rate: float, horizon: float, rng: np.random.Generator, cv: float = 1.0,
             limit: int = 0) -> np.ndarray:
    """Arrival times in [0, horizon) of a renewal process with mean rate ``rate`` per second; with
    ``limit`` > 0, only about the first ``limit`` (at least that many when the horizon has them) are drawn."""
    mean_gap = 1.0 / rate
    expected = int(rate * horizon * 1.2 + 20 + 6 * np.sqrt(rate * horizon))
    if limit and expected > 1_000_000:   # draw in chunks of about the limit (small runs keep their random stream)
        expected = int(limit * 1.2 + 20 + 6 * np.sqrt(limit))
    if process == "deterministic":
        return np.arange(0.0, min(horizon, (limit + 1) * mean_gap) if limit else horizon, mean_gap)
    times = np.empty(0)
    start = 0.0
    while start < horizon and not (limit and len(times) >= limit):
        if process == "poisson":
            gaps = rng.exponential(mean_gap, expected)
        elif process == "gamma":
            shape = 1.0 / cv**2
            gaps = rng.gamma(shape, mean_gap / shape, expected)
        else:
            raise ConfigError(f"unknown arrival process {process!r}")
        chunk = start + np.cumsum(gaps)
        times = np.concatenate([times, chunk])
        start = chunk[-1]
    return times[times < horizon]


def lengths(dist: Distribution, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token counts (integers >= 1) drawn from ``dist``."""
    if dist.dist == "fixed":
        out = np.full(n, dist.value)
    elif dist.dist == "uniform":
        out = rng.integers(int(dist.low), int(dist.high) + 1, n)
    elif dist.dist == "lognormal":
        out = dist.median * np.exp(dist.sigma * rng.standard_normal(n))
    else:
        out = rng.choice(read_lengths(dist.path), n)
    return np.maximum(np.rint(out), 1).astype(np.int64)


def read_lengths(path: str) -> np.ndarray:
    """One positive number per line (blank lines and # comments skipped)."""
    values = []
    try:
        text = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read length file ({exc.strerror})") from None
    for number, line in enumerate(text, start=1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        try:
            value = float(line)
        except ValueError:
            raise ConfigError(f"{path}:{number}: expected a number, got {line!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise ConfigError(f"{path}:{number}: lengths must be positive, got {line!r}")
        values.append(value)
    if not values:
        raise ConfigError(f"{path}: no lengths found")
    return np.asarray(values)


# ------------------------------------------------------------------------------------------ traces
def _check_column(df: pd.DataFrame, column: str, path: str, header_lines: int = 1, integer: bool = True,
                  allow_zero: bool = False) -> np.ndarray:
    """Numeric, finite, non-negative column (whole numbers if ``integer``: token counts); the first
    bad row is reported with its file line."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values) | (values < 0) | ((values == 0) & (not allow_zero))
    if integer:
        bad |= np.isfinite(values) & (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind = ("whole number of tokens" if integer else "number")
        raise ConfigError(f"{path}:{row + 1 + header_lines}: column {column!r} must be a "
                          f"{'non-negative' if allow_zero else 'positive'} {kind}, got {str(df[column].iloc[row])!r}")
    return values


def _check_sorted(times: np.ndarray, path: str, header_lines: int = 1):
    back = np.flatnonzero(np.diff(times) < 0)
    if back.size:
        row = int(back[0]) + 1
        raise ConfigError(f"{path}:{row + 1 + header_lines}: timestamps must be non-decreasing "
                          f"({times[row]:.6f} s after {times[row - 1]:.6f} s)")


def _require(df: pd.DataFrame, columns: list[str], path: str):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}:1: missing column(s) {missing}; found {list(df.columns)}")


# Host memory to parse a trace, per byte of file: peaks measured with tracemalloc are 5.1 (Azure
# conversation CSV, every field a Python string before conversion), 6.9 (Mooncake JSON lines, a dict
# per line) and 2.7 (numeric CSV); these bounds keep a margin, and a test keeps them above the peaks.
PARSE_BYTES_PER_FILE_BYTE = {"azure": 8.0, "mooncake": 10.0, "csv": 4.0}


def read_trace(path: str, fmt: str, budget_gb: float | None = None) -> pd.DataFrame:
    """A trace as a DataFrame with arrival_s (from 0), input_tokens, output_tokens (+ hash_ids, client).
    Read once per file version (choosing the time step reads it too). With ``budget_gb`` a file whose
    parse would need more host memory than that is refused before a byte of it is read."""
    if not Path(path).exists():
        raise ConfigError(f"{path}: trace file not found")
    stat = Path(path).stat()
    need = stat.st_size * PARSE_BYTES_PER_FILE_BYTE.get(fmt, 16.0)
    if budget_gb is not None and need > budget_gb * 1e9:
        raise ConfigError(f"{path}: a {stat.st_size / 1e9:.2f} GB {fmt} trace needs ~{need / 1e9:.1f} GB of memory to "
                          f"read, more than [simulation] memory_budget_gb = {budget_gb:g}; cut the file to the "
                          "arrivals you simulate or raise memory_budget_gb")
    return _read_trace(str(path), fmt, stat.st_mtime_ns, stat.st_size).copy()


@lru_cache(maxsize=8)
def _read_trace(path: str, fmt: str, mtime_ns: int, size: int) -> pd.DataFrame:
    if fmt == "azure":
        df = pd.read_csv(path, dtype=str)
        _require(df, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"], path)
        stamps = pd.to_datetime(df.TIMESTAMP, errors="coerce", format="mixed")
        if stamps.isna().any():
            row = int(np.flatnonzero(stamps.isna())[0])
            raise ConfigError(f"{path}:{row + 2}: TIMESTAMP {df.TIMESTAMP.iloc[row]!r} is not a date-time")
        seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
        out = pd.DataFrame({"arrival_s": seconds, "input_tokens": _check_column(df, "ContextTokens", path),
                            "output_tokens": _check_column(df, "GeneratedTokens", path)})
    elif fmt == "mooncake":
        rows = []
        for number, row in json_lines(path):
            for key in ("timestamp", "input_length", "output_length"):
                if key not in row:
                    raise ConfigError(f"{path}:{number}: missing field {key!r}")
            rows.append(row)
        df = pd.DataFrame(rows)
        out = pd.DataFrame({"arrival_s": _check_column(df, "timestamp", path, 0, integer=False, allow_zero=True) / 1e3,
                            "input_tokens": _check_column(df, "input_length", path, 0),
                            "output_tokens": _check_column(df, "output_length", path, 0)})
        if "hash_ids" in df:
            out["hash_ids"] = df.hash_ids
        _check_sorted(out.arrival_s.to_numpy(), path, 0)
        return out
    elif fmt == "csv":
        df = pd.read_csv(path)
        _require(df, ["arrival_s", "input_tokens", "output_tokens"], path)
        out = pd.DataFrame({"arrival_s": _check_column(df, "arrival_s", path, integer=False, allow_zero=True),
                            "input_tokens": _check_column(df, "input_tokens", path),
                            "output_tokens": _check_column(df, "output_tokens", path)})
        for optional in ("client", "model"):
            if optional in df:
                out[optional] = df[optional].astype(str)
    else:
        raise ConfigError(f"unknown trace format {fmt!r}; allowed: azure, mooncake, csv")
    _check_sorted(out.arrival_s.to_numpy(), path)
    return out


def _from_trace(client: Client, horizon: float, rng: np.random.Generator, budget_gb: float | None = None
                ) -> pd.DataFrame:
    trace = client.trace
    df = read_trace(trace["path"], trace["format"], budget_gb)
    start, end = trace.get("start_s", 0.0), trace.get("end_s", np.inf)
    df = df[(df.arrival_s >= start) & (df.arrival_s < end)].reset_index(drop=True)
    if "arrival" in trace:   # the trace's lengths in order (cycled), new arrival times (like Vidur's trace replay)
        a = trace["arrival"]
        times = arrivals(a["process"], a["rate_per_s"], horizon, rng, a.get("cv", 1.0))
        if client.max_requests:
            times = times[:client.max_requests]
        df = df.iloc[np.arange(len(times)) % max(len(df), 1)].reset_index(drop=True) if len(df) else df
        return df.assign(arrival_s=times[:len(df)] if len(df) else times[:0])
    df["arrival_s"] = (df.arrival_s - start) / trace.get("rate_scale", 1.0)  # k-times rate: gaps / k
    return df[df.arrival_s < horizon]


def _closed_loop(client: Client, horizon: float, rng: np.random.Generator, first_user: int) -> pd.DataFrame:
    """Rounds of ``client.users`` users: round 0 arrives after a first think time, round k + 1 a
    think time after round k's reply. Enough rounds are drawn for every user to stay busy to the
    horizon unless the server answers faster than ~1/4 of the mean think time (then a user that
    runs out is reported by the simulators). Rows are user-major; next_source links the rounds."""
    users = client.users
    rounds = int(min(np.ceil(4 * horizon / client.think_time_s) + 8, max(2_000_000 // users, 2)))
    n = users * rounds
    think = rng.exponential(client.think_time_s, n)
    first = think.reshape(users, rounds)[:, 0]
    arrival = np.full((users, rounds), np.inf)
    arrival[:, 0] = first
    nxt = np.arange(n) + 1
    nxt = np.where(np.arange(n) % rounds == rounds - 1, -1, nxt)
    return pd.DataFrame({"arrival_s": arrival.ravel(), "input_tokens": lengths(client.input_tokens, n, rng),
                         "output_tokens": lengths(client.output_tokens, n, rng), "think_s": np.roll(think, -1),
                         "next_source": nxt.astype(float), "user": np.repeat(np.arange(users) + first_user, rounds)})


def build_workload(scenario: Scenario, seed: int | None = None) -> Workload:
    """All clients' requests merged in arrival order; same seed, same requests."""
    rng = np.random.default_rng(scenario.simulation.seed if seed is None else seed)
    horizon = scenario.simulation.horizon_s
    frames, users_before = [], 0
    for index, client in enumerate(scenario.clients):
        if client.users:
            df = _closed_loop(client, horizon, rng, users_before)
            offset = sum(len(f) for f in frames)
            df["next_source"] = np.where(df.next_source >= 0, df.next_source + offset, -1)
            users_before += client.users
        elif client.trace:
            df = _from_trace(client, horizon, rng, scenario.simulation.memory_budget_gb)
        else:
            a = client.arrival
            expected = a["rate_per_s"] * horizon
            check_expected_requests(scenario, client, min(expected, client.max_requests or expected))
            times = arrivals(a["process"], a["rate_per_s"], horizon, rng, a.get("cv", 1.0),
                             limit=client.max_requests)
            df = pd.DataFrame({"arrival_s": times, "input_tokens": lengths(client.input_tokens, len(times), rng),
                               "output_tokens": lengths(client.output_tokens, len(times), rng)})
        if client.max_requests:
            df = df.iloc[:client.max_requests]
        frames.append(df.assign(client=index))
    df = pd.concat(frames, ignore_index=True)
    df["source"] = np.arange(len(df))
    df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    hashes = list(df.hash_ids) if "hash_ids" in df else None
    closed = {}
    if "user" in df and (df.user.fillna(-1) >= 0).any():
        position = np.empty(len(df), np.int64)
        position[df.source.to_numpy()] = np.arange(len(df))      # where each original row went
        nxt = df.next_source.fillna(-1).to_numpy(np.int64)
        closed = dict(next_request=np.where(nxt >= 0, position[np.maximum(nxt, 0)], -1),
                      think_s=df.think_s.fillna(0.0).to_numpy(float), user=df.user.fillna(-1).to_numpy(np.int64))
    return Workload(arrival_s=df.arrival_s.to_numpy(float), input_tokens=df.input_tokens.to_numpy(np.int64),
                    output_tokens=df.output_tokens.to_numpy(np.int64), client=df.client.to_numpy(np.int64),
                    client_names=tuple(c.name for c in scenario.clients), hash_ids=hashes, **closed)
