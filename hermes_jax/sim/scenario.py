"""Scenario description: simulation settings, engines and clients, from TOML or Python objects.

The same frozen dataclasses are built by ``load_scenario(path)`` and by hand; both run the checks
in ``__post_init__`` so a bad value fails when the scenario is built, with the file, line, field
and allowed values in the message. ``override`` applies ``--set key=value`` edits, addressing
arrays of tables by name: ``client.chat.arrival.rate_per_s=8``, ``engine.e0.replicas=2``,
``simulation.dt_s=0.01``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..schema import LENGTHS, Distribution, Where as _Where, check_keys as _check_keys, choice as _choice
from ..schema import hardware_overrides as _hardware_overrides, positive as _positive
from ..tomlio import load_toml, tomllib

SCHEDULERS = ("static", "continuous", "chunked")
ROUTERS = ("round_robin", "least_outstanding", "least_kv")
PREEMPTION = ("recompute", "swap")
QUEUE_ORDERS = ("fcfs", "priority")
ARRIVALS = ("poisson", "gamma", "deterministic")
TRACE_FORMATS = ("azure", "mooncake", "csv")


def binary_step(dt: float) -> float:
    """The largest k * 2**e <= dt with k in 128..255: a binary fraction, so subtracting it from a
    float32 clock below 2**13 s is exact (a clock carried across 10^5 steps of 0.005 s drifts by
    0.3 ms otherwise, enough to flip a scheduling decision) and less than 1/128 below the value
    asked for."""
    e = math.floor(math.log2(dt)) - 7
    return math.floor(dt / 2.0**e) * 2.0**e


@dataclass(frozen=True)
class Simulation:
    """Time stepping as asked for. ``dt_s`` (s) is the routing cadence: iterations keep continuous
    times, so with one replica, round-robin routing or a state-dependent router over open-loop
    clients the result does not depend on it; it sets speed and the time series' resolution. None:
    chosen for the scenario (``auto_time_step``). The step a run uses is ``Scenario.dt_s``: the
    automatic one, or this value rounded down to a binary fraction (``binary_step``)."""

    dt_s: float | None = None    # s, scheduler step asked for; None = automatic
    horizon_s: float = 3600.0    # s, stop; requests still in the system are reported unfinished
    seed: int = 0
    iterations_per_step: int = 0  # cap on engine iterations inside one step; 0 = derive from dt
    max_steps: int = 5_000_000   # refuse runs of more steps (hermes_jax.sim.budget)
    memory_budget_gb: float = 8.0  # GB, refuse runs whose state, trace and tables would need more

    def __post_init__(self):
        if not (isinstance(self.horizon_s, (int, float)) and math.isfinite(self.horizon_s) and self.horizon_s > 0):
            raise ConfigError(f"[simulation] horizon_s: must be a positive number of seconds, got {self.horizon_s!r}")
        if self.dt_s is None:
            return
        if not (isinstance(self.dt_s, (int, float)) and math.isfinite(self.dt_s) and self.dt_s > 0):
            raise ConfigError(f"[simulation] dt_s: must be a positive number of seconds, got {self.dt_s!r}")
        if self.dt_s > self.horizon_s:
            raise ConfigError(f"[simulation] dt_s: {self.dt_s:g} s is longer than horizon_s ({self.horizon_s:g} s): "
                              "requests after the horizon would be simulated; use a smaller dt_s or leave it out "
                              "(automatic)")

    @staticmethod
    def parse(data: dict, where: _Where) -> "Simulation":
        _check_keys(where, "simulation", 0, "", data, {"dt_s", "horizon_s", "seed", "iterations_per_step", "max_steps",
                                                       "memory_budget_gb"})
        horizon = _positive(where, "simulation", 0, "", data, "horizon_s", 3600.0)
        dt = data.get("dt_s", "auto")
        if dt != "auto":
            dt = _positive(where, "simulation", 0, "", data, "dt_s")
            if dt > horizon:
                raise where.error("simulation", 0, "", "dt_s", f"{dt:g} s is longer than horizon_s ({horizon:g} s); "
                                  "use a smaller dt_s or leave it out (automatic)")
        return Simulation(dt_s=None if dt == "auto" else dt, horizon_s=horizon,
                          seed=_positive(where, "simulation", 0, "", data, "seed", 0, integer=True, allow_zero=True),
                          iterations_per_step=_positive(where, "simulation", 0, "", data, "iterations_per_step", 0,
                                                        integer=True, allow_zero=True),
                          max_steps=_positive(where, "simulation", 0, "", data, "max_steps", 5_000_000, integer=True),
                          memory_budget_gb=_positive(where, "simulation", 0, "", data, "memory_budget_gb", 8.0))


ARRIVALS_PER_STEP = 8       # automatic dt: about this many arrivals per step ...
MAX_AUTO_DT_S = 8.0         # ... but steps of at most 8 s,
MIN_TIMESERIES_POINTS = 200  # at least 200 time-series points over the horizon,
MAX_AUTO_STEPS = 50_000     # at most 50,000 steps,
CLOSED_LOOP_THINK_SHARE = 2.0**-8   # with closed-loop users, at most this share of the shortest mean think time


def client_rate(client: "Client", horizon_s: float, budget_gb: float | None = None) -> float:
    """Arrivals per second of one client averaged over the horizon (``max_requests`` counted;
    closed loop: users / think time, an upper bound)."""
    if client.users:
        return client.users / max(client.think_time_s, 1e-9)
    if client.trace and "arrival" not in client.trace:
        from .workload import read_trace   # the workload reads it again from the same cache
        times = read_trace(client.trace["path"], client.trace["format"], budget_gb).arrival_s.to_numpy()
        start, end = client.trace.get("start_s", 0.0), client.trace.get("end_s", math.inf)
        times = (times[(times >= start) & (times < end)] - start) / client.trace.get("rate_scale", 1.0)
        count = int((times < horizon_s).sum())
    else:
        rate = (client.trace["arrival"] if client.trace else client.arrival)["rate_per_s"]
        count = rate * horizon_s
    if client.max_requests:
        count = min(count, client.max_requests)
    return count / horizon_s


def auto_time_step(sim: "Simulation", engines, clients) -> tuple[float, str]:
    """The step for a scenario: about ARRIVALS_PER_STEP arrivals per step (work per step then grows
    with events, not with horizon / dt), within [horizon / MAX_AUTO_STEPS, min(horizon /
    MIN_TIMESERIES_POINTS, MAX_AUTO_DT_S)], a power of two.

    Closed-loop users send their next request a think time after a reply and it is routed from the
    next step start, so a think time that ends inside the step of its reply (probability about
    dt / think for exponential think times) delays that request to the step end. With such users the
    step is at most CLOSED_LOOP_THINK_SHARE of the shortest mean think time, and this accuracy bound
    wins over the step-count cap (``max_steps`` still refuses a run that is too long, naming dt_s)."""
    rate = sum(client_rate(c, sim.horizon_s, sim.memory_budget_gb) for c in clients)
    horizon = sim.horizon_s
    high = min(horizon / MIN_TIMESERIES_POINTS, MAX_AUTO_DT_S)
    low = max(horizon / MAX_AUTO_STEPS, 2.0**-12)
    dt = ARRIVALS_PER_STEP / rate if rate > 0 else high
    reason = f"about {ARRIVALS_PER_STEP} arrivals per step at {rate:.3g} requests/s"
    if dt > high:
        dt, reason = high, (f"steps of at most {MAX_AUTO_DT_S:g} s" if high == MAX_AUTO_DT_S else
                            f"at least {MIN_TIMESERIES_POINTS} time-series points")
    if dt < low:
        dt, reason = low, f"at most {MAX_AUTO_STEPS} steps over the horizon"
    think = min((c.think_time_s for c in clients if c.users), default=None)
    closed = think is not None and dt > CLOSED_LOOP_THINK_SHARE * think
    if closed:
        dt, reason = CLOSED_LOOP_THINK_SHARE * think, (
            f"closed-loop users: at most 1/{round(1 / CLOSED_LOOP_THINK_SHARE)} of the mean think time {think:g} s "
            "(a next request is routed from the step after its reply)")
    dt = 2.0 ** math.floor(math.log2(min(dt, horizon)))
    if not closed and dt < low and 2.0 ** math.ceil(math.log2(low)) <= horizon:   # a power of two that keeps the cap
        dt = 2.0 ** math.ceil(math.log2(low))
    return dt, f"automatic: {reason}"


@dataclass(frozen=True)
class Engine:
    name: str
    model: str
    hardware: str | tuple[str, ...]   # a catalog name, or one per replica (heterogeneous replicas)
    dtype: str = "bf16"
    kv_dtype: str = ""
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    scheduler: str = "continuous"
    max_batch_size: int = 256
    max_batch_tokens: int = 8192
    block_size: int = 16           # tokens per KV block
    kv_fraction: float = 0.9       # share of device memory the engine may use (vLLM gpu_memory_utilization)
    activation_reserve_gb: float = 2.0  # GB per device kept for activations and buffers
    preemption: str = "recompute"   # or "swap": KV to host memory while swap_space_gb holds it
    swap_space_gb: float = 4.0     # GB per device of host swap space (vLLM's default)
    router: str = "round_robin"
    queue_order: str = "fcfs"      # or "priority": clients' priority (smaller first), then arrival
    hardware_overrides: dict = field(default_factory=dict)
    # Serving stack whose fitted efficiencies and overheads apply ("": the catalog's values). Unless the
    # engine sets kv_fraction, activation_reserve_gb or block_size itself, the stack's KV rule sizes the
    # cache too (kv_from_stack).
    stack: str = ""
    kv_from_stack: bool = False

    FIELDS = ("name", "model", "hardware", "dtype", "kv_dtype", "tp", "pp", "replicas", "scheduler", "max_batch_size",
              "max_batch_tokens", "block_size", "kv_fraction", "activation_reserve_gb", "preemption", "swap_space_gb",
              "router", "queue_order", "hardware_overrides", "stack")
    KV_RULE_FIELDS = ("kv_fraction", "activation_reserve_gb", "block_size")

    def hardware_kwargs(self) -> dict:
        """Keyword arguments of ``get_hardware`` for this engine's replicas."""
        return {**({"stack": self.stack} if self.stack else {}), **self.hardware_overrides}

    @staticmethod
    def parse(data: dict, index: int, where: _Where) -> "Engine":
        name = data.get("name", "")
        if not isinstance(name, str) or not name:
            raise where.error("engine", index, "", "name", "required (a non-empty string)")
        _check_keys(where, "engine", index, name, data, set(Engine.FIELDS))
        if not isinstance(data.get("model"), str):
            raise where.error("engine", index, name, "model", "required (a catalog name)")
        hardware = data.get("hardware")
        if isinstance(hardware, list) and hardware and all(isinstance(h, str) for h in hardware):
            # one entry per replica: heterogeneous replicas of the same model behind one router
            data = {"replicas": len(hardware), **data}
            if data["replicas"] != len(hardware):
                raise where.error("engine", index, name, "replicas", f"is {data['replicas']} but hardware lists "
                                  f"{len(hardware)} entries (one per replica)")
            hardware = tuple(hardware)
        elif not isinstance(hardware, str):
            raise where.error("engine", index, name, "hardware", "required (a catalog name, or a list of one per replica)")
        stack = data.get("stack", "")
        kv_from_stack = False
        if stack:
            from ..stacks import get_stack
            try:
                profile = get_stack(stack) if isinstance(stack, str) else None
            except ConfigError as exc:
                raise where.error("engine", index, name, "stack", str(exc)) from None
            if profile is None:
                raise where.error("engine", index, name, "stack", f"expected a stack name, got {stack!r}")
            kv_from_stack = not any(k in data for k in Engine.KV_RULE_FIELDS)
            if kv_from_stack:
                data = {**data, "block_size": profile.kv.block_size}
        ints = {k: _positive(where, "engine", index, name, data, k, getattr(Engine, k), integer=True)
                for k in ("tp", "pp", "replicas", "max_batch_size", "max_batch_tokens", "block_size")}
        fraction = _positive(where, "engine", index, name, data, "kv_fraction", 0.9)
        if fraction > 1:
            raise where.error("engine", index, name, "kv_fraction", f"must be in (0, 1], got {fraction}")
        overrides = _hardware_overrides(where, "engine", index, name, data)
        return Engine(name=name, model=data["model"], hardware=hardware, dtype=data.get("dtype", "bf16"),
                      kv_dtype=data.get("kv_dtype", ""), **ints, kv_fraction=fraction,
                      activation_reserve_gb=_positive(where, "engine", index, name, data, "activation_reserve_gb", 2.0,
                                                      allow_zero=True),
                      scheduler=_choice(where, "engine", index, name, data, "scheduler", SCHEDULERS, "continuous"),
                      preemption=_choice(where, "engine", index, name, data, "preemption", PREEMPTION, "recompute"),
                      swap_space_gb=_positive(where, "engine", index, name, data, "swap_space_gb", 4.0),
                      router=_choice(where, "engine", index, name, data, "router", ROUTERS, "round_robin"),
                      queue_order=_choice(where, "engine", index, name, data, "queue_order", QUEUE_ORDERS, "fcfs"),
                      hardware_overrides=overrides, stack=stack,
                      kv_from_stack=kv_from_stack)


@dataclass(frozen=True)
class Client:
    name: str
    engine: str
    arrival: dict = field(default_factory=lambda: {"process": "poisson", "rate_per_s": 1.0})
    input_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    slo_ttft_s: float = math.inf
    slo_tpot_s: float = math.inf
    priority: int = 0
    trace: dict = field(default_factory=dict)   # {path, format, rate_scale, start_s, end_s, arrival}
    max_requests: int = 0        # keep only the first N requests (0: all)
    users: int = 0               # closed loop: N users, each sending its next request after a think time
    think_time_s: float = 0.0    # mean think time (exponential) between a reply and the next request
    pipeline: tuple = ()         # stages (hermes_jax.pipeline.stages) ending in generate; () = generate only

    @staticmethod
    def parse(data: dict, index: int, where: _Where, base: Path | None) -> "Client":
        name = data.get("name", "")
        if not isinstance(name, str) or not name:
            raise where.error("client", index, "", "name", "required (a non-empty string)")
        _check_keys(where, "client", index, name, data,
                    {"name", "engine", "arrival", "input_tokens", "output_tokens", "slo", "priority", "trace",
                     "max_requests", "users", "think_time_s", "pipeline"})
        pipeline = ()
        if "pipeline" in data:
            from ..pipeline.parse import parse_stage
            from ..pipeline.retrieval import Route
            from ..pipeline.stages import Generate
            if not isinstance(data["pipeline"], list) or not data["pipeline"]:
                raise where.error("client", index, name, "pipeline", "expected a list of stages, e.g. "
                                  "[{ stage = \"embed\", on = \"cpu\", model = \"bge-base-en-v1.5\" }, "
                                  "{ stage = \"generate\", engine = \"llm\" }]")
            pipeline = tuple(parse_stage(s, k, where, index, name, base) for k, s in enumerate(data["pipeline"]))
            generate = [s for s in pipeline if isinstance(s, Generate)]
            if len(generate) != 1:
                raise where.error("client", index, name, "pipeline", f"needs exactly one generate stage, got {len(generate)}")
            routes = [s for s in pipeline if isinstance(s, Route)]
            engines = generate[0].engines() or (routes[0].to[:1] if routes else ())
            if not engines:
                raise where.error("client", index, name, "pipeline", "the generate stage needs an engine (or a route "
                                  "stage before it)")
            if "engine" in data:
                raise where.error("client", index, name, "engine", "give the engine in the pipeline's generate stage, "
                                  "not here")
            if "users" in data:
                raise where.error("client", index, name, "pipeline", "closed-loop clients (users) with a pipeline are "
                                  "not supported yet")
            data = {**data, "engine": engines[0]}   # the first engine it may use (for display)
        if not isinstance(data.get("engine"), str):
            raise where.error("client", index, name, "engine", "required (the name of an [[engine]])")
        slo = data.get("slo", {})
        _check_keys(where, "client", index, name, slo, {"ttft_s", "tpot_s"}, prefix="slo.")
        common = dict(name=name, engine=data["engine"], pipeline=pipeline,
                      slo_ttft_s=_positive(where, "client", index, name, slo, "slo.ttft_s", math.inf),
                      slo_tpot_s=_positive(where, "client", index, name, slo, "slo.tpot_s", math.inf),
                      priority=_positive(where, "client", index, name, data, "priority", 0, integer=True, allow_zero=True),
                      max_requests=_positive(where, "client", index, name, data, "max_requests", 0, integer=True,
                                             allow_zero=True))
        if "trace" in data:
            trace = data["trace"]
            _check_keys(where, "client", index, name, trace, {"path", "format", "rate_scale", "start_s", "end_s", "arrival"},
                        "trace.")
            if not isinstance(trace.get("path"), str):
                raise where.error("client", index, name, "trace.path", "required")
            _choice(where, "client", index, name, trace, "trace.format", TRACE_FORMATS)
            path = Path(trace["path"])
            trace = dict(trace, path=str(path if path.is_absolute() or base is None else base / path))
            for key in ("rate_scale", "start_s", "end_s"):
                if key in trace:
                    _positive(where, "client", index, name, trace, f"trace.{key}", allow_zero=key != "rate_scale")
            if "arrival" in trace:   # lengths from the trace, in order; arrival times drawn anew
                trace["arrival"] = _arrival(where, index, name, trace["arrival"], "trace.arrival")
            return Client(**common, trace=trace)
        lengths = {k: Distribution.parse(data.get(k), where, index, name, k, base) for k in ("input_tokens", "output_tokens")}
        if "users" in data or "think_time_s" in data:   # closed loop
            if "arrival" in data:
                raise where.error("client", index, name, "arrival", "give either arrival (open loop) or users and "
                                  "think_time_s (closed loop), not both")
            if "max_requests" in data:   # it would cut users' rounds apart
                raise where.error("client", index, name, "max_requests", "not allowed with users (closed loop); "
                                  "the horizon bounds the requests")
            return Client(**common, users=_positive(where, "client", index, name, data, "users", integer=True),
                          think_time_s=_positive(where, "client", index, name, data, "think_time_s"), **lengths)
        arrival = _arrival(where, index, name, data.get("arrival"), "arrival")
        return Client(**common, arrival=arrival, **lengths)


def _arrival(where: _Where, index: int, name: str, arrival: Any, key: str) -> dict:
    if not isinstance(arrival, dict):
        raise where.error("client", index, name, key, "required: { process = \"poisson\", rate_per_s = 5 } "
                          "(or give trace = { path, format })")
    process = _choice(where, "client", index, name, arrival, f"{key}.process", ARRIVALS)
    allowed = {"process", "rate_per_s"} | ({"cv"} if process == "gamma" else set())
    _check_keys(where, "client", index, name, arrival, allowed, prefix=f"{key}.")
    _positive(where, "client", index, name, arrival, f"{key}.rate_per_s")
    if process == "gamma":
        _positive(where, "client", index, name, arrival, f"{key}.cv")
    return dict(arrival)


@dataclass(frozen=True)
class Scenario:
    simulation: Simulation
    engines: tuple[Engine, ...]
    clients: tuple[Client, ...]
    source: str = "<python>"
    resources: tuple = ()   # hermes_jax.pipeline.spec.Resource: pools pipeline stages run on

    def __post_init__(self):
        names = [e.name for e in self.engines]
        if not names:
            raise ConfigError(f"{self.source}: at least one [[engine]] is required")
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.source}: engine names must be unique, got {names}")
        if not self.clients:
            raise ConfigError(f"{self.source}: at least one [[client]] is required")
        cnames = [c.name for c in self.clients]
        if len(set(cnames)) != len(cnames):
            raise ConfigError(f"{self.source}: client names must be unique, got {cnames}")
        for c in self.clients:
            if c.engine not in names:
                raise ConfigError(f"{self.source}: [[client]] {c.name!r} engine: unknown engine {c.engine!r}; "
                                  f"defined: {', '.join(names)}")
        if self.resources or any(c.pipeline for c in self.clients):
            from ..pipeline.spec import check_pipelines
            check_pipelines(self)
        # The step the run uses, derived here (a copy with other clients or settings derives it anew)
        asked = self.simulation.dt_s
        if asked is None:
            step = auto_time_step(self.simulation, self.engines, self.clients)
        else:
            dt = binary_step(float(asked))
            step = dt, "given" if dt == asked else f"given {asked:g} s, rounded down to a binary fraction"
        object.__setattr__(self, "_step", step)

    @property
    def dt_s(self) -> float:
        """s, the step the run uses (``Simulation.dt_s`` asked for it, or None: automatic)."""
        return self._step[0]

    @property
    def dt_reason(self) -> str:
        """How ``dt_s`` was chosen."""
        return self._step[1]

    @property
    def steps(self) -> int:
        """Steps over the horizon."""
        return int(math.ceil(self.simulation.horizon_s / self.dt_s))

    def engine(self, name: str) -> Engine:
        return next(e for e in self.engines if e.name == name)


def parse_scenario(data: dict, path: Path | None = None) -> Scenario:
    """Build a Scenario from a parsed TOML dict (``path`` for error messages and relative paths)."""
    where = _Where(path)
    unknown = set(data) - {"simulation", "engine", "client", "resource"}
    if unknown:
        raise ConfigError(f"{path or '<scenario>'}: unknown top-level table(s) {sorted(unknown)}; "
                          "allowed: [simulation], [[engine]], [[client]], [[resource]]")
    for key in ("engine", "client", "resource"):
        if not isinstance(data.get(key, []), list):
            raise ConfigError(f"{path or '<scenario>'}: {key} must be an array of tables ([[{key}]])")
    base = path.parent if path else None
    engines = tuple(Engine.parse(e, i, where) for i, e in enumerate(data.get("engine", [])))
    clients = tuple(Client.parse(c, i, where, base) for i, c in enumerate(data.get("client", [])))
    from ..pipeline.spec import Resource
    resources = tuple(Resource.parse(r, i, where) for i, r in enumerate(data.get("resource", [])))
    return Scenario(Simulation.parse(data.get("simulation", {}), where), engines, clients, str(path or "<python>"),
                    resources)


def load_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = (), stack: str | None = None) -> Scenario:
    """Read a scenario file, apply ``--set`` overrides; ``stack`` is the serving stack of every engine
    that names none itself."""
    path = Path(path)
    try:
        data = override(load_toml(path), overrides)
        if stack:
            data["engine"] = [{"stack": stack, **e} if isinstance(e, dict) else e for e in data.get("engine", [])]
        return parse_scenario(data, path)
    except ConfigError as exc:
        if not overrides:
            raise
        # the line points into the file, but the bad value may come from the command line
        raise ConfigError(f"{exc} (with --set {' '.join(overrides)})") from None


def override(data: dict, assignments) -> dict:
    """Apply ``key=value`` edits; the value is parsed as TOML (numbers, strings, tables) else kept as text."""
    data = copy.deepcopy(data)
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. client.chat.arrival.rate_per_s=8")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        parts = key.strip().split(".")
        if parts[0] in ("engine", "client", "resource"):
            if len(parts) < 3:
                raise ConfigError(f"--set {item!r}: use {parts[0]}.NAME.field=value")
            match = [t for t in data.get(parts[0], []) if t.get("name") == parts[1]]
            if not match:
                known = [t.get("name") for t in data.get(parts[0], [])]
                raise ConfigError(f"--set {item!r}: no {parts[0]} named {parts[1]!r}; defined: {known}")
            target, rest = match[0], parts[2:]
        elif parts[0] == "simulation" and len(parts) == 2:
            target, rest = data.setdefault("simulation", {}), parts[1:]
        else:
            raise ConfigError(f"--set {item!r}: key must start with simulation., engine.NAME., client.NAME. or "
                              "resource.NAME.")
        for part in rest[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a table")
        target[rest[-1]] = value
    return data
