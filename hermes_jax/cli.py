"""Command line: ``hermes-jax estimate ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import ConfigError
from .models.config import DTYPE_BYTES
from .stacks import DEFAULT_STACK

# Everything that imports JAX is imported inside the commands: --help and --version start in a blink.

def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _chosen_stack(args) -> str | None:
    """The stack ``--stack`` / ``--stack-file`` select (a file defining one stack selects it unless
    --stack names another); None for 'catalog', the hardware catalog's own values."""
    if args.stack_file:
        from .stacks import load_stack_file
        defined = load_stack_file(args.stack_file)
        if args.stack == DEFAULT_STACK and len(defined) == 1:
            return defined[0]
    return None if args.stack == "catalog" else args.stack


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermes-jax", description="Differentiable LLM serving simulator")
    parser.add_argument("--version", action="version", version=f"hermes-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="static-batch prefill / decode / end-to-end time and memory",
                         description="Time of a static batch: prefill of every request (which samples the first "
                                     "token), then output-1 decode steps over a growing context. Comma lists give "
                                     "the full grid.")
    src = est.add_mutually_exclusive_group()
    src.add_argument("--model", default="llama-2-70b", help="catalog model name (default llama-2-70b)")
    src.add_argument("--model-config", metavar="PATH", help="a Hugging Face config.json instead of a catalog name")
    est.add_argument("--hardware", default=None, help="catalog device name (default h100-sxm)")
    est.add_argument("--hardware-file", metavar="PATH", help="TOML with [device.NAME] (and link/cpu/tier) tables")
    est.add_argument("--tp", type=_int_list, default=[8], help="tensor-parallel degree(s), comma list (default 8)")
    est.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    est.add_argument("--ep", type=int, default=1, help="expert-parallel degree (MoE)")
    est.add_argument("--batch", type=_int_list, default=[1], help="requests per batch, comma list")
    est.add_argument("--prompt", type=_int_list, default=[2048], help="input tokens per request, comma list")
    est.add_argument("--output", type=_int_list, default=[256], help="output tokens per request, comma list")
    est.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES), help="weight dtype")
    est.add_argument("--kv-dtype", default=None, help="KV-cache dtype (default: from --dtype)")
    est.add_argument("--stack", default=DEFAULT_STACK, help="serving stack whose fitted efficiencies, overheads "
                     "and KV rule apply (vllm, trt-llm, deepspeed-mii, deepspeed, splitwise-2023, sarathi-2024, "
                     f"or 'catalog' for the hardware catalog's own values; default {DEFAULT_STACK}). A device the "
                     "stack has no fit for takes the fit of its die, else the stack's fallback for its platform, "
                     "else another stack's fit on it, and the header line says which")
    est.add_argument("--stack-file", metavar="PATH", help="TOML defining your own stack(s) (schema: "
                     "hermes_jax/stacks/data/stacks.toml)")
    est.add_argument("--ideal", action="store_true", help="pure datasheet roofline: efficiency 1, no overheads")
    est.add_argument("--smooth", action="store_true", help="smooth max in the roofline (for gradients)")
    est.add_argument("--json", action="store_true", help="one JSON object per grid point, one per line")
    sim = sub.add_parser("simulate", help="simulate a serving scenario (TOML); default: the bundled scenario",
                         description="Run a scenario with the time-stepped simulator; print a summary and, with "
                                     "--out, write summary.json, requests.csv, timeseries.csv and plots.")
    sim.add_argument("scenario", nargs="?", help="scenario TOML (default: the bundled default scenario)")
    sim.add_argument("--out", metavar="DIR", help="directory for summary.json, requests.csv, timeseries.csv, PNGs")
    sim.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario field, e.g. client.chat.arrival.rate_per_s=8 (repeatable)")
    sim.add_argument("--stack", default=DEFAULT_STACK, help="serving stack of every engine that names none itself "
                     f"(its efficiencies, overheads and KV rule; 'catalog': the catalog's values); default {DEFAULT_STACK}")
    sim.add_argument("--stack-file", metavar="PATH", help="TOML defining your own stack(s)")
    sim.add_argument("--seed", type=int, default=None, help="random seed of the workload (simulation.seed)")
    sim.add_argument("--quiet", action="store_true", help="print only the summary (no plan, no progress)")
    sub.add_parser("catalog", help="list the models, hardware and serving stacks known by name",
                   description="Names accepted by --model, --hardware, --stack and scenario files.")
    cmp = sub.add_parser("compare", help="runs or configurations side by side: one table and one plot",
                         description="Each item: a run directory (hermes-jax simulate --out) or a scenario TOML "
                                     "(simulated now). With --vary KEY=V1,V2,..., the first scenario once per value.")
    cmp.add_argument("items", nargs="*", help="run directories or scenario files (default: the bundled scenario)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a field of every scenario item (repeatable)")
    cmp.add_argument("--vary", default=None, metavar="KEY=V1,V2,...", help="one run per value of a scenario field")
    cmp.add_argument("--stack", default=DEFAULT_STACK, help=f"serving stack (default {DEFAULT_STACK})")
    cmp.add_argument("--stack-file", metavar="PATH", help="TOML defining your own stack(s)")
    cmp.add_argument("--out", default=None, metavar="DIR", help="directory for compare.csv and compare.png")
    cal = sub.add_parser("calibrate", help="fit a serving stack's parameters on a device to measurements",
                         description="Fit a stack on one device to static-batch tables (LLM-Inference-Bench or a CSV "
                                     "with model,hardware,tp,batch,input,output,latency_s[,ttft_s,stack]), to a "
                                     "request trace (--trace) or to kernel timings (--ops); write a stack file "
                                     "(--stack-file reads it) and a Markdown + JSON report (static fits: a residual "
                                     "plot too).")
    cal.add_argument("data", nargs="+", help="measurement table(s)")
    cal.add_argument("--device", required=True, help="catalog device whose rows to fit")
    cal.add_argument("--stack", default=DEFAULT_STACK, help="stack to fit (rows with another stack are left out; "
                     f"default {DEFAULT_STACK})")
    cal.add_argument("--start", default=None, help="stack whose values the fit starts from (default sarathi-2024)")
    cal.add_argument("--params", default=None, help="comma list of parameters to fit (default: the stack set, "
                     "see hermes_jax.calibrate.static_fit.DEFAULT_NAMES; with KERNEL_NAMES where the start has no "
                     "kernel-level fit of the device)")
    cal.add_argument("--bound", action="append", default=[], metavar="NAME=LO:HI", help="bounds (natural units)")
    cal.add_argument("--prior", action="append", default=[], metavar="NAME=VALUE:SD",
                     help="log-normal prior: value (natural units) and sd in e-folds")
    cal.add_argument("--loss", default="huber", choices=["huber", "log", "relative"], help="loss of the fit")
    cal.add_argument("--hold-out", action="append", default=[], metavar="COLUMN=V1,V2",
                     help="hold out rows whose column has one of these values, e.g. model=qwen2-7b")
    cal.add_argument("--test-fraction", type=float, default=0.0, help="hold out a random share of rows instead")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--steps", type=int, default=None, help="Adam steps before the Levenberg-Marquardt polish "
                     "(default 300; with --trace 0, as each step is a whole simulation)")
    cal.add_argument("--polish", type=int, default=60, help="Levenberg-Marquardt polish steps (at most)")
    cal.add_argument("--bootstrap", type=int, default=0, help="bootstrap refits to check the Laplace intervals")
    cal.add_argument("--out", default="calibration-out", help="directory for the report and stack file")
    cal.add_argument("--trace", action="store_true", help="the data is a per-request trace (AIPerf JSONL, vLLM "
                     "benchmark_serving JSON, LLMPerf JSON, CSV arrival_s,input,output,ttft_s,e2e_s): fit through the "
                     "serving simulator to its latency summaries (needs --model; default parameters: "
                     "host_overhead_s, memory_efficiency)")
    cal.add_argument("--ops", action="store_true", help="the data is a kernel timing table (hardware,kind,flop,"
                     "bytes,time_s, or a Vidur mlp.csv): fit kernel-level efficiencies (default: compute and memory "
                     "efficiency, their half sizes, kernel overhead)")
    cal.add_argument("--model", default=None, help="with --trace: the catalog model the trace's engine served")
    cal.add_argument("--tp", type=int, default=1, help="with --trace: tensor-parallel degree of that engine")
    cal.add_argument("--max-batch-size", type=int, default=256, help="with --trace: the engine's max_num_seqs")
    cal.add_argument("--dt", type=float, default=0.01, help="with --trace: simulator time step (s)")
    des = sub.add_parser("design", help="search hardware parameters for an objective under SLO constraints",
                         description="Scale an engine's datasheet parameters (peak FLOP/s, HBM bandwidth and capacity, "
                                     "link bandwidth, ...) within bounds to minimise cost or energy per token, or "
                                     "maximise throughput, under constraints on simulated metrics; write the best "
                                     "design, every evaluated design, a Pareto table and plot.")
    des.add_argument("scenario", nargs="?", help="scenario TOML (default: the bundled default scenario)")
    des.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario field (repeatable)")
    des.add_argument("--stack", default=DEFAULT_STACK, help=f"serving stack (default {DEFAULT_STACK})")
    des.add_argument("--stack-file", metavar="PATH", help="TOML defining your own stack(s)")
    des.add_argument("--engine", default=None, help="engine to design (needed with several)")
    des.add_argument("--vary", action="append", default=[], metavar="NAME=LO:HI",
                     help="a parameter and its multiplier bounds, e.g. hbm_bandwidth=0.5:2 (repeatable; default "
                          "peak_flops=0.25:4 and hbm_bandwidth=0.25:4); on a pipeline scenario any engine's or "
                          "resource's, e.g. resource.search-cpu.cpu_cores=0.25:2 or engine.llm.peak_flops=0.5:2")
    des.add_argument("--knob", action="append", default=[], metavar="NAME=V1,V2,...",
                     help="a serving knob of the engine and its allowed values, searched with the hardware "
                          "(tp, max_batch_size, max_batch_tokens, replicas; the scenario's own value among them), "
                          "e.g. tp=1,2,4 or max_batch_size=16,32,64,128 (repeatable; single-stage scenarios): the "
                          "gradient searches relax them between values, then round and re-optimise")
    des.add_argument("--objective", default="usd_per_mtok", help="usd_per_mtok (default), j_per_token, cost_usd, "
                     "energy_j (minimised) or throughput_tokens_s, goodput_rps, tokens_per_usd (maximised)")
    des.add_argument("--slo", action="append", default=[], metavar="METRIC<=V",
                     help="constraint on a simulated metric, e.g. ttft_p99_s<=2 or goodput_rps>=5 (repeatable)")
    des.add_argument("--method", default="gradient", choices=["gradient", "trust-region", "random", "cma-es"],
                     help="search method (default gradient: SQP on smoothed gradients; trust-region: SLP on the "
                          "same gradients that refuses steps past a cliff)")
    des.add_argument("--budget", type=int, default=200, help="simulator evaluations (default 200)")
    des.add_argument("--seed", type=int, default=0)
    des.add_argument("--out", default="design-out", help="directory for design.md, designs.csv, design.json, pareto.png")
    return parser


def _design(args) -> None:
    import numpy as np

    from .design import (Constraint, DesignProblem, Variable, cmaes_search, gradient_search, random_search,
                         trust_region_search)
    from .design.pipeline import PipelineDesignProblem
    from .design.problem import MAXIMISE
    from .design.serving import ServingDesignProblem, ServingKnob, serving_search
    from .design.report import write_design_report
    from .sim.simulate import is_pipeline
    from .sim.differentiable import DifferentiableSim
    from .sim.scenario import load_scenario
    from .sim.smoothing import Smoothed
    from .sim import DEFAULT_SCENARIO

    def bounds(text):
        lo, hi = text.split(":")
        return float(lo), float(hi)

    varied = _pairs(args.vary, "--vary", bounds) or {"peak_flops": (0.25, 4.0), "hbm_bandwidth": (0.25, 4.0)}
    constraints = []
    for item in args.slo:
        for op in ("<=", ">="):
            if op in item:
                metric, value = item.split(op, 1)
                try:
                    v = float(value)
                except ValueError:
                    raise ConfigError(f"--slo {item!r}: {value!r} is not a number") from None
                constraints.append(Constraint(metric.strip(), **({"upper": v} if op == "<=" else {"lower": v})))
                break
        else:
            raise ConfigError(f"--slo {item!r}: expected METRIC<=VALUE or METRIC>=VALUE")
    scenario = load_scenario(args.scenario or str(DEFAULT_SCENARIO), args.overrides, _chosen_stack(args))
    knobs = [ServingKnob.parse(k) for k in args.knob]
    if knobs and is_pipeline(scenario):
        raise ConfigError(f"{scenario.source}: --knob works on single-stage scenarios; a pipeline's engines take "
                          "hardware variables only (--vary engine.NAME.FIELD=LO:HI)")
    if is_pipeline(scenario):
        # variables are knobs (engine.NAME.FIELD, resource.NAME.FIELD); a bare FIELD is the engine's
        engine = args.engine or scenario.engines[0].name
        if not args.engine and len(scenario.engines) > 1 and any("." not in n for n in varied):
            raise ConfigError(f"{scenario.source}: several engines; name the one a bare --vary field belongs to "
                              f"with --engine, or vary engine.NAME.FIELD")
        variables = [Variable(n if "." in n else f"engine.{engine}.{n}", lo, hi) for n, (lo, hi) in varied.items()]
        problem = PipelineDesignProblem(scenario, variables, args.objective, constraints)
    else:
        variables = [Variable(n, lo, hi) for n, (lo, hi) in varied.items()]
        if knobs:   # its start configuration's metrics name the known ones (no extra model)
            problem = ServingDesignProblem(scenario, variables, knobs, args.objective, constraints, engine=args.engine)
            known = problem.metrics_batch(np.zeros((1, len(problem.names))))
        else:
            model = DifferentiableSim(scenario, engine=args.engine, estimator=Smoothed(scales=(0.1,)))
            known = model.metrics(model.params)
        for c in constraints:
            if c.metric not in known:
                raise ConfigError(f"--slo {c.metric}: unknown metric; known: {', '.join(sorted(known))}")
        if not knobs:
            problem = DesignProblem(model, variables, args.objective, constraints)
    say = lambda m: print(f"  {m}", flush=True)  # noqa: E731
    gradient = (lambda: serving_search(problem, args.budget, args.seed, gradient_search, progress=say)) if knobs \
        else (lambda: gradient_search(problem, budget=args.budget, seed=args.seed, progress=say))
    trust = (lambda: serving_search(problem, args.budget, args.seed, trust_region_search, progress=say)) if knobs \
        else (lambda: trust_region_search(problem, budget=args.budget, seed=args.seed, progress=say))
    search = {"gradient": gradient, "trust-region": trust,
              "random": lambda: random_search(problem, args.budget, seed=args.seed),
              "cma-es": lambda: cmaes_search(problem, args.budget, seed=args.seed)}[args.method]
    result = search()
    for p in write_design_report(problem, result, args.out):
        print(f"wrote {p}")
    best = result.best(args.objective in MAXIMISE)
    if best is None:
        print("no feasible design found within the budget (see design.md)")
    else:
        print(f"best: {problem.describe(best[1])}: {args.objective} = {best[0]:.4g} after {best[2]} evaluations")


def _pairs(items: list[str], flag: str, parse) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = parse(value)
        except ConfigError as exc:  # a well-formed value the bound or prior refuses: say why
            raise ConfigError(f"{flag} {item!r}: {exc}") from None
        except ValueError:
            raise ConfigError(f"{flag} {item!r}: expected {flag[2:].upper().replace('-', '_')} as NAME=...") from None
    return out


def _calibrate(args) -> None:
    import pandas as pd

    from .calibrate.fit import LOSSES, Bound, Prior
    from .calibrate.readers import read_static_batch
    from .calibrate.static_fit import DEFAULT_START, calibrate_static

    def interval(text):
        lo, hi = text.split(":")
        return Bound(float(lo), float(hi))

    def prior(text):
        value, sd = text.split(":")
        return Prior(float(value), float(sd))

    bounds = _pairs(args.bound, "--bound", interval)
    priors = _pairs(args.prior, "--prior", prior)
    held_out = _pairs(args.hold_out, "--hold-out", lambda v: [x.strip() for x in v.split(",") if x.strip()])
    if not 0.0 <= args.test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if args.model and not args.trace:
        raise ConfigError("--model is for --trace fits (static tables and kernel tables name their models per row)")
    if args.trace and args.ops:
        raise ConfigError("--trace and --ops name two different kinds of data: give one")
    if args.trace or args.ops:  # a flag these fits do not use must not be dropped silently
        unused = [flag for flag, given in (("--hold-out", args.hold_out), ("--test-fraction", args.test_fraction),
                                           ("--start", args.start), ("--bootstrap", args.trace and args.bootstrap))
                  if given]
        if unused:
            raise ConfigError(f"{', '.join(unused)} not supported with {'--trace' if args.trace else '--ops'}")
    if args.trace:
        _calibrate_trace(args, bounds, priors)
        return
    if args.ops:
        _calibrate_ops(args, bounds, priors)
        return
    tables = [read_static_batch(p) for p in args.data]
    for path, t in zip(args.data, tables):
        print(f"{path}: {t.summary()}")
    rows = pd.concat([t.rows for t in tables], ignore_index=True)
    rows = rows[(rows["stack"] == args.stack) | (rows["stack"] == "")]
    names = [n.strip() for n in args.params.split(",")] if args.params else None
    result = calibrate_static(rows, args.device, args.stack, names=names, start=args.start or DEFAULT_START,
                              bounds=bounds, priors=priors, loss=LOSSES[args.loss](), held_out=held_out,
                              test_fraction=args.test_fraction, seed=args.seed,
                              steps=300 if args.steps is None else args.steps,
                              polish_steps=args.polish, bootstrap=args.bootstrap, data_files=args.data,
                              progress=lambda msg: print(f"  {msg}", flush=True))
    _report(result, args.out)


def _calibrate_ops(args, bounds, priors) -> None:
    import pandas as pd

    from .calibrate.fit import LOSSES
    from .calibrate.ops import OP_NAMES, calibrate_ops, read_op_table

    rows = pd.concat([read_op_table(p) for p in args.data], ignore_index=True)
    names = [n.strip() for n in args.params.split(",")] if args.params else list(OP_NAMES)
    result = calibrate_ops(rows, args.device, names, stack=None if args.stack == "catalog" else args.stack,
                           loss=LOSSES[args.loss](), bounds=bounds, priors=priors, steps=300 if args.steps is None else args.steps,
                           polish_steps=args.polish, bootstrap=args.bootstrap, data_files=args.data,
                           progress=lambda msg: print(f"  {msg}", flush=True))
    _report(result, args.out)


def _report(result, out: str) -> None:
    """Print a calibration's errors and warnings, write its report and stack file."""
    print(result.errors().round(4).to_string(index=False))
    for w in result.fit.warnings:
        print("warning:", w)
    for p in result.write(out):
        print(f"wrote {p}")


def _calibrate_trace(args, bounds, priors) -> None:
    from .calibrate.fit import LOSSES
    from .calibrate.trace_fit import calibrate_trace
    from .calibrate.traces import read_request_trace

    if not args.model or len(args.data) != 1:
        raise ConfigError("--trace needs --model and exactly one trace file")
    trace = read_request_trace(args.data[0])
    print(f"{args.data[0]}: {trace.summary()}")
    engine = {"model": args.model, "hardware": args.device, "tp": args.tp, "max_batch_size": args.max_batch_size,
              **({"stack": args.stack} if args.stack != "catalog" else {})}
    names = [n.strip() for n in args.params.split(",")] if args.params else ["host_overhead_s", "memory_efficiency"]
    result = calibrate_trace(trace, engine, names, dt_s=args.dt, bounds=bounds, priors=priors,
                             loss=LOSSES[args.loss](), steps=args.steps or 0, polish_steps=args.polish,
                             progress=lambda msg: print(f"  {msg}", flush=True))
    _report(result, args.out)


def output_directory(path: str | None, flag: str = "--out") -> None:
    """Check (and create) an output directory before any work, so a bad --out loses nothing."""
    if not path:
        return
    import os
    from pathlib import Path

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create the directory ({exc.strerror})") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the directory is not writable")


def _catalog() -> None:
    from .hardware.catalog import default_catalog, hardware_names
    from .models.config import get_model, model_names
    from .stacks import get_stack, stack_names

    catalog = default_catalog()
    print("models:")
    for name in model_names():
        m = get_model(name)
        print(f"  {name:28s} {m.layers:3d} layers, hidden {m.hidden:6d}, context {m.max_context:7d}"
              f"{', MoE' if m.is_moe else ''}")
    print("hardware:")
    for name in hardware_names():
        d = catalog.get("device", name)
        print(f"  {name:28s} {d.get('kind', 'gpu'):5s} bf16 {float(d['peak_flops']['bf16']) / 1e12:7.0f} TFLOP/s, "
              f"{float(d['hbm_bandwidth']) / 1e12:5.2f} TB/s, {float(d['hbm_capacity']) / 1e9:6.1f} GB, "
              f"${float(d['price_per_hour']):.2f}/h")
    print("stacks (fitted on; other devices take the fit of the same die, else the stack's fallback for their "
          "platform, else catalog values):")
    for name in stack_names():
        stack = get_stack(name)
        kernels = "; decode attention " + ", ".join(f"{k}: {v}" for k, v in stack.decode_attention.items()) \
            if stack.decode_attention else ""
        fallback = "; fallback " + ", ".join(f"{k}: {v}" for k, v in stack.fallback.items()) if stack.fallback else ""
        print(f"  {stack.label:28s} {', '.join(d for d in stack.devices if d != 'default') or '-'}{fallback}{kernels}")


def _compare(args) -> None:
    from pathlib import Path

    from .sim.compare import collect_summaries, compare_table, write_compare

    table = compare_table(collect_summaries(args.items, args.overrides, args.vary, _chosen_stack(args)))
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if args.out:
        for p in write_compare(table, Path(args.out)):
            print(f"wrote {p}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("simulate", "calibrate", "design", "compare"):
            output_directory(args.out)
            from .sim.cache import enable_compilation_cache
            enable_compilation_cache()
        if args.command == "estimate":
            if args.hardware is None and not args.hardware_file:
                args.hardware = "h100-sxm"
            from .estimate_table import estimate_rows, print_table
            rows = estimate_rows(args, _chosen_stack)
            if args.json:
                for row in rows:
                    print(json.dumps(row))
            else:
                print_table(rows)
            if all(row["impossible"] for row in rows):
                print(f"hermes-jax: error: no grid point can run ({len(rows)} impossible; reasons above)",
                      file=sys.stderr)
                return 1
        elif args.command == "calibrate":
            _calibrate(args)
        elif args.command == "design":
            _design(args)
        elif args.command == "simulate":
            from .sim.report import run_cli
            overrides = args.overrides + ([f"simulation.seed={args.seed}"] if args.seed is not None else [])
            run_cli(args.scenario, args.out, overrides, _chosen_stack(args), quiet=args.quiet)
        elif args.command == "catalog":
            _catalog()
        elif args.command == "compare":
            _compare(args)
    except ConfigError as exc:
        print(f"hermes-jax: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and closed early
        sys.stderr.close()
    return 0


def entry() -> None:
    """The console script: ``main()``, then a prompt exit. Tearing down JAX, XLA and matplotlib at
    interpreter exit takes about half a second a finished command has no use for: every output is
    written and closed by then, so the streams are flushed and the process ends there (unless Ray
    runs in it, whose exit hooks stop its workers)."""
    code = main()
    if "ray" in sys.modules:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # closed, or a reader that went away
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
