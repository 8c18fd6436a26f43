"""Per-operator FLOP and byte accounting for one iteration of a batch.

A batch is described per sequence slot by ``new`` (tokens processed this iteration: the prompt or
a prefill chunk, 1 for a decode step, 0 for an empty slot), ``context`` (tokens already in the KV
cache) and ``logits`` (1 if the slot samples a token this iteration). Prefill, decode and mixed
(chunked) iterations are the same computation with different arrays.

Every number is per device and per single execution of the operator (one layer); ``count`` says
how often it runs per iteration. Assumptions (stated once here, measured by calibration/):
- weights are read once per execution whatever the batch size; activations are read and written
  once (no fusion across operators); KV of the attended context is read once per sequence;
- tensor parallelism shards heads and MLP columns; KV heads are replicated when tp > kv_heads; the
  MLA latent is replicated on every TP rank;
- MoE tokens pick top_k of the experts uniformly, so a batch of T tokens touches
  E * (1 - (1 - k/E)^T) experts; expert parallelism splits experts evenly;
- pipeline stages run one after another for one batch (latency, not throughput).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from .config import ModelConfig, dtype_bytes

GEMM, ATTENTION, ELEMENTWISE, COLLECTIVE = "gemm", "attention", "elementwise", "collective"
COLLECTIVES = ("allreduce", "sendrecv", "alltoall")


@dataclass(frozen=True)
class Parallelism:
    """Static parallel layout: tensor, pipeline and expert parallel degrees."""

    tp: int = 1
    pp: int = 1
    ep: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.pp * (self.ep if self.ep > 1 else 1)


@dataclass(frozen=True)
class OpSpec:
    """Static description of one operator: name, report group, kind and executions per iteration."""

    name: str
    group: str
    kind: str                  # GEMM | ATTENTION | ELEMENTWISE | COLLECTIVE
    count: int
    collective: str = ""       # allreduce | sendrecv | alltoall, for COLLECTIVE ops
    group_size: int = 1        # devices taking part in the collective
    kernel: str = ""           # ELEMENTWISE_KERNELS class, for ELEMENTWISE ops


def op_specs(model: ModelConfig, par: Parallelism) -> tuple[OpSpec, ...]:
    """The static operator list of one iteration (ops that run 0 times are left out)."""
    L, dense, moe = model.layers, model.dense_layers, model.moe_layers
    ops = [
        OpSpec("embedding", "embedding", ELEMENTWISE, 1, kernel="embedding"),
        OpSpec("input_norm", "norms", ELEMENTWISE, L, kernel="norm"),
        OpSpec("qkv_proj", "projections", GEMM, L),
        OpSpec("rope", "norms", ELEMENTWISE, 0 if model.encoder else L, kernel="rope"),
        OpSpec("attention", "attention", ATTENTION, L),
        OpSpec("out_proj", "projections", GEMM, L),
        OpSpec("post_norm", "norms", ELEMENTWISE, 0 if model.parallel_block else L, kernel="norm"),
        OpSpec("mlp_up", "mlp", GEMM, dense),
        OpSpec("mlp_act", "mlp", ELEMENTWISE, dense, kernel="activation"),
        OpSpec("mlp_down", "mlp", GEMM, dense),
        OpSpec("moe_router", "moe", GEMM, moe),
        OpSpec("moe_experts", "moe", GEMM, moe),
        OpSpec("residual_add", "norms", ELEMENTWISE, (1 if model.parallel_block else 2) * L, kernel="residual_add"),
        OpSpec("final_norm", "norms", ELEMENTWISE, 0 if model.encoder else 1, kernel="norm"),
        OpSpec("lm_head", "lm_head", GEMM, 0 if model.encoder else 1),
        OpSpec("tp_allreduce", "communication", COLLECTIVE, 2 * L if par.tp > 1 else 0, "allreduce", par.tp),
        OpSpec("pp_sendrecv", "communication", COLLECTIVE, par.pp - 1, "sendrecv", 2),
        OpSpec("ep_alltoall", "communication", COLLECTIVE, 2 * moe if par.ep > 1 else 0, "alltoall", par.ep),
    ]
    return tuple(op for op in ops if op.count > 0)


def _attended_pairs(new, context, window, bidirectional, xp=jnp):
    """Query-key pairs per sequence: causal with an optional sliding window, or all pairs."""
    if bidirectional:
        return new * (context + new)
    if not window:
        return new * context + new * (new + 1) / 2
    # Query j (1..n) at position context + j sees min(context + j, window) keys.
    m = xp.clip(window - context, 0, new)
    return m * context + m * (m + 1) / 2 + (new - m) * window


def operator_costs(model: ModelConfig, par: Parallelism, weight_dtype: str, kv_dtype: str,
                   act_dtype: str, new, context, logits, copies=None, xp=jnp, kv_reads=None) -> dict[str, tuple]:
    """``{op name: (flop, bytes)}`` per device per execution; for collectives bytes is the message.

    ``new``, ``context``, ``logits``: arrays of shape (..., B) in tokens; leading axes broadcast
    (e.g. over decode steps). ``copies`` (same shape, default 1) counts identical sequences per
    slot, so a static batch of B equal requests is one slot with copies = B (B stays dynamic).
    ``kv_reads`` (a ``kernels.kv_reads`` rule, default: each KV head read once) gives the decode
    kernel's KV re-reads across a query-head group. Returned arrays have the leading shape. ``xp``
    is the array module (``numpy`` for the NumPy baseline in benchmarks/, which must use the very
    same formulas).
    """
    wb, kvb, ab = dtype_bytes(weight_dtype), dtype_bytes(kv_dtype), dtype_bytes(act_dtype)
    tp, ep = par.tp, par.ep
    d, e = model.hidden, model.head_dim
    h = model.heads / tp
    g = max(model.kv_heads / tp, 1.0)
    copies = xp.ones_like(xp.asarray(new)) if copies is None else copies
    new, context, logits, copies = xp.broadcast_arrays(new, context, logits, copies)
    T = (copies * new).sum(-1)
    S = (copies * (new > 0)).sum(-1)
    Lg = (copies * xp.asarray(logits)).sum(-1)
    costs: dict[str, tuple] = {}

    def gemm(name, m_tokens, k_in, n_out, weights=None):
        weights = k_in * n_out if weights is None else weights
        costs[name] = (2.0 * m_tokens * k_in * n_out, weights * wb + m_tokens * (k_in + n_out) * ab)

    costs["embedding"] = (0.0 * T, T * d * (wb + ab))
    norm = (4.0 * T * d, 2.0 * T * d * ab + d * wb)
    costs["input_norm"] = costs["post_norm"] = costs["final_norm"] = norm
    # x + f(x) reads two tensors and writes one. A parallel block's x + attn + mlp runs as two such
    # binary adds in eager PyTorch (vLLM's and Vidur's phi code alike), one execution per layer.
    costs["residual_add"] = ((2.0 if model.parallel_block else 1.0) * T * d,
                             (6.0 if model.parallel_block else 3.0) * T * d * ab)

    if model.is_mla:
        qk, vd = model.qk_nope_dim + model.qk_rope_dim, model.v_head_dim
        q_w = d * model.q_lora_rank + model.q_lora_rank * h * qk if model.q_lora_rank else d * h * qk
        kv_w = d * (model.kv_lora_rank + model.qk_rope_dim) + model.kv_lora_rank * h * (model.qk_nope_dim + vd)
        costs["qkv_proj"] = (2.0 * T * (q_w + kv_w), (q_w + kv_w) * wb + T * (d + h * (qk + model.qk_nope_dim + vd)) * ab)
        costs["rope"] = (3.0 * T * (h + 1) * model.qk_rope_dim, 2.0 * T * (h + 1) * model.qk_rope_dim * ab)
        attn_flop_per_pair, q_o_width, out_in = h * (2 * qk + 2 * vd), h * (qk + vd), h * vd
    else:
        gemm("qkv_proj", T, d, (h + 2 * g) * e)
        costs["rope"] = (3.0 * T * (h + g) * e, 2.0 * T * (h + g) * e * ab)
        attn_flop_per_pair, q_o_width, out_in = 4.0 * h * e, 2 * h * e, h * e
    kv_elems = model.kv_lora_rank + model.qk_rope_dim if model.is_mla else 2 * g * e  # per token per layer

    pairs = (copies * _attended_pairs(new, context, model.sliding_window, model.encoder, xp)).sum(-1)
    window = model.sliding_window or None
    kv_read = xp.minimum(context + new, window) if window else context + new
    if kv_reads is not None and kv_reads.applies(model):
        # KV bytes the paged decode kernel reads, and re-reads across a query-head group if every
        # re-read reaches HBM (scaled in iteration); absent for models on a grouped kernel.
        decode = (new == 1) & (context > 0)
        decode_tokens = (copies * xp.where(decode, kv_read, 0)).sum(-1)
        paged, reread = kv_reads.paged_reads(model, par, decode_tokens, (copies * decode).sum(-1), xp)
        costs["_attention_paged_kv_bytes"] = (reread * kv_elems * kvb, paged * kv_elems * kvb)  # (re-reads, reads)
    kv_read = (copies * xp.where(new > 0, kv_read, 0)).sum(-1)
    kv_traffic = 0.0 if model.encoder else (kv_read + T) * kv_elems * kvb  # read context, write new
    costs["attention"] = (attn_flop_per_pair * pairs, kv_traffic + T * q_o_width * ab)
    # KV tokens the running sequences hold (what a host rebuilds block tables over).
    costs["_held_tokens"] = (kv_read, 0.0 * kv_read)
    # Causal masking leaves new (new - 1) / 2 pairs per sequence unneeded; a kernel that does not skip
    # masked tiles still computes them (scaled by hardware attention_causal_efficiency in iteration).
    masked = 0.0 * pairs if (model.encoder or model.sliding_window) else (copies * new * xp.maximum(new - 1, 0) / 2).sum(-1)
    costs["_attention_masked_flop"] = (attn_flop_per_pair * masked, 0.0 * masked)
    # Work per query row that does not grow with the keys (scaled by hardware attention_row_keys).
    costs["_attention_row_flop"] = (attn_flop_per_pair * T, 0.0 * T)
    gemm("out_proj", T, out_in, d)

    f = model.ffn / tp
    gemm("mlp_up", T, d, (2 if model.gated_mlp else 1) * f)
    costs["mlp_act"] = (5.0 * T * f, (3.0 if model.gated_mlp else 2.0) * T * f * ab)
    gemm("mlp_down", T, f, d)

    if model.is_moe:
        E, k = model.experts, model.top_k
        mats = 3 if model.gated_mlp else 2
        fe = model.expert_ffn / tp
        costs["moe_router"] = (2.0 * T * d * E, d * E * wb + T * (d * ab + E * 4.0))
        touched = E * (1.0 - (1.0 - k / E) ** T) / ep
        shared = model.shared_experts * mats * d * fe
        flop = 2.0 * mats * d * fe * (T * k / ep + T * model.shared_experts)
        traffic = (touched * mats * d * fe + shared) * wb + (T * k / ep + T) * d * ab * 2
        costs["moe_experts"] = (flop, traffic)
        costs["ep_alltoall"] = (0.0 * T, T * k * d * ab / ep)

    V = model.vocab / tp
    costs["lm_head"] = (2.0 * Lg * d * V, d * V * wb + Lg * (d * ab + V * 4.0))
    costs["tp_allreduce"] = (0.0 * T, T * d * ab)
    costs["pp_sendrecv"] = (0.0 * T, T * d * ab)
    costs["_active_sequences"] = (S, S)
    costs["_sampled_sequences"] = (Lg, Lg)
    return costs


def weight_bytes_per_device(model: ModelConfig, par: Parallelism, weight_dtype: str) -> float:
    """Weights resident on one device: layers split over pp, matrices over tp, experts over ep."""
    wb = dtype_bytes(weight_dtype)
    per_layer = (model.attention_params() + 2 * model.hidden) / par.tp
    total = model.layers * per_layer + model.dense_layers * model.mlp_params(model.ffn) / par.tp
    if model.is_moe:
        always, routed = model.moe_layer_params()
        total += model.moe_layers * (always / par.tp + routed / (par.tp * par.ep))
    total /= par.pp
    head = 0 if (model.tie_embeddings or model.encoder) else model.vocab * model.hidden
    total += (model.vocab * model.hidden + head) / par.tp / par.pp  # embedding/head live on end stages
    return total * wb


def kv_bytes_per_token_per_device(model: ModelConfig, par: Parallelism, kv_dtype: str) -> float:
    """KV bytes one device stores per token of context (layers over pp, heads over tp)."""
    if model.encoder:
        return 0.0
    if model.is_mla:
        per_layer = model.kv_elems_per_token_layer()
    else:
        per_layer = 2 * max(model.kv_heads / par.tp, 1.0) * model.head_dim
    return model.layers / par.pp * per_layer * dtype_bytes(kv_dtype)
