"""Case study (b): batching in a hybrid CPU (RAG) + GPU (LLM) pipeline, and where the bottleneck moves.

    python experiments/rag_batching.py      # full sizes; writes experiments/results/rag_batching/
    python experiments/rag_batching.py --replot   # redraw figure and findings from the last table.csv

Pipeline: embed the question (BGE-base on 8 host cores, 2 per query), IVF search over 1B 768-d
passages in 1-byte codes (nlist 262144 float32 centroids, nprobe 256) on a pool of search cores,
rerank 20 candidates on an H100, and answer with Llama-3.1-8B on one H100 (4 passages of 256
tokens added to a 200-token question, 150-token answers). Swept: the LLM's batching (static,
continuous, chunked prefill), the retrieval batch (embed and search take up to b queued queries at
once: a batch reads the encoder's weights and the IVF centroids once), and the number of search
cores, at 6 requests/s (about two thirds of what the LLM sustains with chunked prefill). The token
budget per iteration is 16,384 for static and continuous batching (a whole batch of prompts fits)
and 2,048 for chunked prefill (vLLM's chunk size). The bottleneck is the stage that contributes most to the mean TTFT
(a station's wait plus service; the LLM's queueing plus prefill up to the first token).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_study  # noqa: E402
from case_study import run, small_default  # noqa: E402

SCHEDULERS = ("static", "continuous", "chunked")
CORES = (1, 2, 4, 16)
BATCHES = (1, 16)


def scenario(scheduler: str, cores: int, batch: int, rate: float, horizon: float) -> dict:
    pipeline = [
        {"stage": "embed", "on": "embed-cpu", "model": "bge-base-en-v1.5", "query_tokens": 32, "threads": 2,
         "batch": batch},
        {"stage": "vector_search", "on": "search-cpu", "index": "ivf", "vectors": 1e9, "dim": 768, "bytes_per_dim": 1,
         "nlist": 262144, "nprobe": 256, "top_k": 20, "chunk_tokens": 256, "batch": batch},
        {"stage": "rerank", "on": "rerank-gpu", "model": "bge-reranker-base", "candidates": 20, "keep": 4,
         "chunk_tokens": 256, "batch": 4},
        {"stage": "generate", "engine": "llm"},
    ]
    return {"simulation": {"dt_s": 0.01, "horizon_s": horizon, "seed": 0},
            "resource": [{"name": "embed-cpu", "kind": "cpu", "hardware": "h100-sxm", "cores": 8},
                         {"name": "search-cpu", "kind": "cpu", "hardware": "h100-sxm", "cores": cores},
                         {"name": "rerank-gpu", "kind": "accelerator", "hardware": "h100-sxm"}],
            "engine": [{"name": "llm", "model": "llama-3.1-8b", "hardware": "h100-sxm", "scheduler": scheduler,
                        "max_batch_tokens": 2048 if scheduler == "chunked" else 16384, "max_batch_size": 64}],
            "client": [{"name": "rag", "arrival": {"process": "poisson", "rate_per_s": rate},
                        "input_tokens": {"dist": "fixed", "value": 200}, "output_tokens": {"dist": "fixed", "value": 150},
                        "slo": {"ttft_s": 2.0, "tpot_s": 0.05}, "pipeline": pipeline}]}


def study(small: bool | None = None) -> pd.DataFrame:
    small = small_default() if small is None else small
    schedulers, cores, batches = (("chunked",), (1,), (1, 16)) if small else (SCHEDULERS, CORES, BATCHES)
    rate, horizon = (6.0, 8.0) if small else (6.0, 120.0)
    rows = []
    for scheduler in schedulers:
        for n in cores:
            for b in batches:
                result = run(scenario(scheduler, n, b, rate, horizon))
                df, s = result.requests, result.summary
                done = df[df.status == "finished"]
                st = result.extra["stages"].merge(done[["request"]], on="request")
                kind = st.stage.str.split(":").str[1]
                wait = (st.start_s - st.ready_s).groupby(kind).mean()
                part = (st.finish_s - st.ready_s).groupby(kind).mean().drop("generate")
                part["llm prefill"] = (done.first_token_s - done.engine_arrival_s).mean()
                util = {k: v["utilization"] for k, v in s["resources"].items()}
                rows.append({"scheduler": scheduler, "search_cores": n, "retrieval_batch": b, "requests": len(df),
                             "finished": len(done), "goodput_rps": s["goodput_rps"],
                             "ttft_p50_s": done.ttft_s.median(), "ttft_p99_s": done.ttft_s.quantile(0.99),
                             "e2e_p50_s": done.e2e_s.median(), "e2e_p99_s": done.e2e_s.quantile(0.99),
                             "search_wait_s": wait.get("vector_search", 0.0), "llm_wait_s": wait.get("generate", 0.0),
                             "util_search": util["search-cpu"], "util_embed": util["embed-cpu"],
                             "util_llm": util["llm"], "bottleneck": part.idxmax(), "bottleneck_s": part.max()})
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> list[str]:
    out = []
    for (scheduler, b), part in table.groupby(["scheduler", "retrieval_batch"], sort=False):
        moves = " -> ".join(f"{r.search_cores} cores: {r.bottleneck} ({r.bottleneck_s:.2f} s of the mean TTFT; search "
                            f"cores {r.util_search:.0%} busy), p99 TTFT {r.ttft_p99_s:.2f} s" for r in part.itertuples())
        out.append(f"{scheduler} batching, retrieval batch {b}: {moves}.")
    few = table[table.search_cores == table.search_cores.min()]
    if few.retrieval_batch.nunique() > 1:
        one, many = few[few.retrieval_batch == 1], few[few.retrieval_batch == few.retrieval_batch.max()]
        out.append(f"With {few.search_cores.iloc[0]} search cores, batching retrieval (b = "
                   f"{few.retrieval_batch.max()}) changes the search queue wait from {one.search_wait_s.mean():.2f} s "
                   f"to {many.search_wait_s.mean():.2f} s (mean over schedulers): the batch reads the centroids once.")
    if table.retrieval_batch.nunique() > 1:
        last = table[table.scheduler == table.scheduler.iloc[-1]]
        pairs = last.pivot(index="search_cores", columns="retrieval_batch", values="ttft_p99_s")
        b = pairs.columns.max()
        out.append(f"{table.scheduler.iloc[-1]} batching, p99 TTFT with retrieval batch 1 -> {b}, by search cores: "
                   + ", ".join(f"{c}: {r[1]:.2f} -> {r[b]:.2f} s" for c, r in pairs.iterrows())
                   + ". Batching pays while the search cores are saturated; once they are not, a query waits for the "
                   "rest of its batch.")
    if table.scheduler.nunique() > 1:
        most = table[table.search_cores == table.search_cores.max()].set_index("scheduler")
        out.append("With the CPU no longer limiting (" + str(table.search_cores.max()) + " cores), p99 TTFT and E2E by "
                   "LLM batching: " + ", ".join(f"{k} {r.ttft_p99_s.min():.2f} s and {r.e2e_p99_s.min():.2f} s"
                                                for k, r in most.groupby(level=0)) + ".")
    return out


def figure(table: pd.DataFrame):
    plt = case_study.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (scheduler, b), part in table.groupby(["scheduler", "retrieval_batch"], sort=False):
        axes[0].plot(part.search_cores, part.ttft_p99_s, marker="o", label=f"{scheduler}, retrieval batch {b}")
        axes[1].plot(part.search_cores, part.util_search, marker="o", label=f"{scheduler}, retrieval batch {b}")
    axes[0].set_ylabel("p99 TTFT (s)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("search cores utilization")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("search cores")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    case_study.main("rag_batching", "Case study (b): batching for a hybrid CPU (RAG) + GPU (LLM) pipeline",
                    lambda: study(small=False), findings, figure)
