"""What a user waits for: one-shot runs of the command line, cold and warm compilation cache, against
Vidur on the same machine. Rewrites the one-shot section of benchmarks/README.md and writes
benchmarks/results/oneshot.json. Run: python benchmarks/bench_oneshot.py [--repeat N]

Rows, each a fresh process (``hermes-jax simulate SCENARIO --out DIR``, wall seconds):
- cold: an empty persistent compilation cache (``HERMES_JAX_CACHE`` pointing at a new directory);
- warm: the same command again (the cache filled by the cold run);
- steady state: ``simulate`` called again in one process after its first call.
Scenarios: Vidur's own (Llama-2-70B, A100 TP2, 10,000 requests at 1/s with Azure conversation
lengths), ten requests of the default scenario, an idle engine (ten requests in the first
seconds) over one hour and over one day, and the bundled RAG + KV-retrieval pipeline (rag_kv: 395
requests through embed, search, rerank, CXL fetch and one engine).

Vidur (microsoft/vidur) runs side by side when ``--vidur-python`` names a Python that can import it
(its profiles from ``../shared/data/vidur_profiles``); the same scenario: one replica, TP2, vLLM
scheduler with batch cap 128 and 4,096 batch tokens, Poisson arrivals at 1/s, the Azure
conversation lengths, 10,000 requests. Else its published 25 s is the baseline, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
VIDUR_SCENARIO = HERE / "scenarios" / "vidur_llama2_70b_a100_tp2.toml"
DEFAULT = ROOT / "hermes_jax" / "scenarios" / "default.toml"
VIDUR_PUBLISHED_S = 25.0
START, END = "<!-- bench-oneshot:start -->", "<!-- bench-oneshot:end -->"

SCENARIOS = {
    "vidur": (VIDUR_SCENARIO, []),
    "ten_requests": (DEFAULT, ["client.chat.max_requests=10"]),
    "idle_hour": (DEFAULT, ["client.chat.max_requests=10", "simulation.horizon_s=3600"]),
    "idle_day": (DEFAULT, ["client.chat.max_requests=10", "simulation.horizon_s=86400"]),
    "rag_kv": (ROOT / "hermes_jax" / "scenarios" / "rag_kv.toml", []),
}


def cli_run(path: Path, overrides: list[str], cache: Path, out: Path) -> tuple[float, str]:
    """Wall seconds of one ``hermes-jax simulate`` process and its output."""
    command = [sys.executable, "-m", "hermes_jax.cli", "simulate", str(path), "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, HERMES_JAX_CACHE=str(cache))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def steady_state(path: Path, overrides: list[str], repeat: int) -> float:
    """Best wall seconds of ``simulate`` after its first call, in a fresh process."""
    code = (
        "import sys, time\n"
        "from hermes_jax.sim import load_scenario, simulate\n"
        f"scenario = load_scenario({str(path)!r}, {overrides!r})\n"
        "simulate(scenario)\n"
        "best = min((lambda t: (simulate(scenario), time.perf_counter() - t)[1])(time.perf_counter())\n"
        f"           for _ in range({repeat}))\n"
        "print(best)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, HERMES_JAX_CACHE="off"))
    if done.returncode:
        raise RuntimeError(done.stderr)
    return float(done.stdout.strip().splitlines()[-1])


def vidur_trace(directory: Path) -> Path:
    """The Azure 2023 conversation lengths in Vidur's trace format."""
    import pandas as pd

    df = pd.read_csv(SHARED / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv")
    path = directory / "azure_conv_vidur.csv"
    pd.DataFrame({"num_prefill_tokens": df.ContextTokens, "num_decode_tokens": df.GeneratedTokens}).to_csv(path, index=False)
    return path


def vidur_run(python: str, work: Path, trace: Path, source: str | None = None) -> tuple[float, str]:
    """Wall seconds of one Vidur process on the scenario (its model cache under ``work``)."""
    profiles = SHARED / "vidur_profiles"
    args = {
        "replica_config_device": "a100", "replica_config_model_name": "meta-llama/Llama-2-70b-hf",
        "cluster_config_num_replicas": 1, "replica_config_tensor_parallel_size": 2,
        "replica_config_num_pipeline_stages": 1, "request_generator_config_type": "synthetic",
        "synthetic_request_generator_config_num_requests": 10000, "length_generator_config_type": "trace",
        "trace_request_length_generator_config_max_tokens": 4096,
        "trace_request_length_generator_config_trace_file": trace, "interval_generator_config_type": "poisson",
        "poisson_request_interval_generator_config_qps": 1.0, "replica_scheduler_config_type": "vllm",
        "vllm_scheduler_config_batch_size_cap": 128, "vllm_scheduler_config_max_tokens_in_batch": 4096,
        "random_forrest_execution_time_predictor_config_compute_input_file":
            profiles / "compute" / "a100" / "meta-llama" / "Llama-2-70b-hf" / "mlp.csv",
        "random_forrest_execution_time_predictor_config_attention_input_file":
            profiles / "legacy_e2d00e9" / "a100" / "attention.csv",
        "random_forrest_execution_time_predictor_config_all_reduce_input_file":
            profiles / "network" / "a100_pairwise_nvlink" / "all_reduce.csv",
        "random_forrest_execution_time_predictor_config_send_recv_input_file":
            profiles / "network" / "a100_pairwise_nvlink" / "send_recv.csv",
        "random_forrest_execution_time_predictor_config_cpu_overhead_input_file":
            profiles / "legacy_2024-05" / "a100" / "cpu_overheads.csv",
        "metrics_config_output_dir": work / "out", "metrics_config_cache_dir": work / "cache",
    }
    command = [python, "-m", "vidur.main"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    start = time.perf_counter()
    env = dict(os.environ, **({"PYTHONPATH": source} if source else {}))   # vidur/ has no __init__.py
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"vidur failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, done.stdout + done.stderr


def measure(repeat: int, vidur_python: str | None, vidur_source: str | None, vidur_cache: str | None = None,
            vidur_cold_s: float | None = None, vidur_recorded: dict | None = None) -> dict:
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                     "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (path, overrides) in SCENARIOS.items():
            cache = tmp / f"cache-{name}"
            cold, out = cli_run(path, overrides, cache, tmp / f"out-{name}")
            warm = min(cli_run(path, overrides, cache, tmp / f"out-{name}")[0] for _ in range(repeat))
            steady = steady_state(path, overrides, repeat)
            match = re.search(r"dt ([\d.e-]+) s .*?, ([\d,]+) steps", out)
            results["runs"][name] = {"cold_s": cold, "warm_s": warm, "steady_s": steady,
                                     "dt_s": float(match.group(1)) if match else None,
                                     "steps": int(match.group(2).replace(",", "")) if match else None}
            print(name, results["runs"][name], flush=True)
        if vidur_python:
            work = tmp / "vidur"
            work.mkdir()
            trace = vidur_trace(work)
            if vidur_cache:   # predictors trained by an earlier run (training takes most of an hour here)
                shutil.copytree(vidur_cache, work / "cache")
                first, source = vidur_cold_s, "run here with its predictors trained by an earlier run"
            else:
                first = vidur_run(vidur_python, work, trace, vidur_source)[0]   # trains its execution-time models
                source = "run here"
            again = min(vidur_run(vidur_python, work, trace, vidur_source)[0] for _ in range(repeat))   # cached
            results["vidur"] = {"first_s": first, "cached_models_s": again, "source": source}
            print("vidur", results["vidur"], flush=True)
        elif vidur_recorded:   # Vidur's times from an earlier run of this script (Vidur not installed now)
            v = vidur_recorded["vidur"]
            source = v["source"].split(" [")[0].replace("run here", "run")
            results["vidur"] = {**v, "source": f"{source} [recorded by an earlier run of this script on "
                                               f"{vidur_recorded['machine']}]"}
        else:
            results["vidur"] = {"first_s": VIDUR_PUBLISHED_S, "cached_models_s": VIDUR_PUBLISHED_S,
                                "source": "published (not runnable here)"}
    return results


def table(results: dict) -> str:
    v = results["vidur"]
    runs = results["runs"]
    vidur = runs["vidur"]
    lines = [START, "", f"Machine: {results['machine']}. Wall seconds of a fresh process each "
             "(`hermes-jax simulate SCENARIO --out DIR`: imports, workload, compilation or cache load, run, outputs); "
             f"Vidur {v['source']}.", "",
             "| | hermes_jax | Vidur | Vidur / hermes_jax |", "|---|---|---|---|",
             (f"| Vidur's scenario, one shot, cold cache | {vidur['cold_s']:.2f} s | {v['first_s']:.0f} s (trains its "
              f"predictors) | {v['first_s'] / vidur['cold_s']:.0f}x |" if v["first_s"] else
              f"| Vidur's scenario, one shot, cold cache | {vidur['cold_s']:.2f} s | not measured | - |"),
             f"| Vidur's scenario, one shot, warm cache | {vidur['warm_s']:.2f} s | {v['cached_models_s']:.1f} s "
             f"(predictors cached) | {v['cached_models_s'] / vidur['warm_s']:.1f}x |",
             f"| Vidur's scenario, steady state (in process, after compile) | {vidur['steady_s']:.3f} s | - | "
             f"{v['cached_models_s'] / vidur['steady_s']:.0f}x |", "",
             "| scenario | dt (automatic) | steps | cold s | warm s | steady state s |", "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['dt_s']:g} s | {r['steps']:,} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | "
                     f"{r['steady_s']:.3f} |")
    lines += ["", f"An idle engine over a day costs {runs['idle_day']['warm_s'] / runs['idle_hour']['warm_s']:.2f}x "
              "what it costs over an hour (warm).", "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--vidur-python", default=os.environ.get("VIDUR_PYTHON"),
                        help="a Python that imports vidur (default $VIDUR_PYTHON; none: the published time)")
    parser.add_argument("--vidur-source", default=os.environ.get("VIDUR_SOURCE"),
                        help="directory holding Vidur's vidur/ package (a checkout of microsoft/vidur), put on PYTHONPATH")
    parser.add_argument("--vidur-cache", default=None, help="Vidur's cache directory from an earlier run (trained "
                        "predictors): only runs with cached predictors are timed")
    parser.add_argument("--vidur-cold-s", type=float, default=None, help="with --vidur-cache: the measured wall "
                        "seconds of the run that trained them")
    parser.add_argument("--from-json", action="store_true", help="rewrite the README from results/oneshot.json")
    parser.add_argument("--vidur-recorded", action="store_true", help="without a Vidur to run: keep the Vidur times "
                        "results/oneshot.json holds from an earlier run of this script (the table says so)")
    args = parser.parse_args()
    out = HERE / "results" / "oneshot.json"
    recorded = json.loads(out.read_text()) if args.vidur_recorded and out.exists() else None
    if args.from_json:
        results = json.loads(out.read_text())
    else:
        results = measure(args.repeat, args.vidur_python, args.vidur_source, args.vidur_cache, args.vidur_cold_s,
                          recorded)
        out.write_text(json.dumps(results, indent=2))
    readme = HERE / "README.md"
    text = readme.read_text()
    section = table(results)
    if START in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text += "\n## One-shot runs against Vidur (`python benchmarks/bench_oneshot.py`)\n\n" + section + "\n"
    readme.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
