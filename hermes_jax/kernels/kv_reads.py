"""How a decode attention kernel reads the KV cache of a grouped-query model: a serving stack's choice.

With grouped-query attention (GQA) ``h`` query heads share each of ``g`` KV heads. A kernel that
packs a group's query heads together (FlashAttention-2 ``flash_attn_with_kvcache``, FlashInfer,
TensorRT-LLM's XQA) reads every KV head once: the bytes ``models.operators`` counts. vLLM's own
PagedAttention decode kernel gives every (sequence, query head) its own thread block, which reads
that head's KV blocks itself; the group's re-reads are served from L2 while its blocks run side by
side and reach HBM when the grid is large. vLLM 0.4-0.6 on CUDA runs a model with a sliding window
on that kernel (the XFormers backend: FlashAttention-2 was not used with sliding windows), every
other model on FlashAttention-2; on ROCm it decodes every model with its paged kernel (rule
"paged"). Its v1 kernel takes over from the partitioned v2 when sequences x query heads exceeds 512
(or the context fits one 512-token partition).

Measured (LLM-Inference-Bench, vLLM, Mistral-7B-v0.1 with 4 query heads per KV head): on H100 at TP1
batch >= 32 and TP2 batch 64 (sequences x heads per device > 512) a step costs 1.1x (128 tokens) to
2.5x (2048) that of GQA models of its size (DeciLM-7B, Qwen2-7B), about what every query head
reading its KV from HBM predicts; at or below 512, 0.95-1.2x (``calibration/explore_vllm_static.py
--rules`` prints the table, and the fits with and without this rule). Two fitted values of the
(stack, device) describe the kernel: ``HardwareParams.paged_attention_memory_efficiency`` (its KV
streaming relative to the attention kernels of other models) and ``paged_kv_reread`` (the share of
the group's re-reads that reach HBM); this module decides where they apply.

A rule says whether a model's decode runs on the paged kernel (``applies``, static: nothing is added
to the cost of other models) and, where it does, the KV tokens that kernel reads per iteration and
the extra tokens it would read from HBM if every re-read reached it (the factor ``h/g - 1`` on the
decode sequences' attended context); ``iteration`` turns them into bytes at those efficiencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp


@dataclass(frozen=True)
class GroupedKVReads:
    """Every KV head is read once per sequence, whatever the group size (FlashAttention, FlashInfer)."""

    name: str = "grouped"

    def applies(self, model) -> bool:
        """Whether ``model``'s decode runs on a paged kernel (never here: nothing to add)."""
        return False


@dataclass(frozen=True)
class PagedKVReads:
    """vLLM's PagedAttention decode kernel for the models it serves with it (``sliding_window_only``:
    the XFormers backend of vLLM 0.4-0.6 on CUDA); the group's re-reads count when sequences x
    query heads per device exceeds ``shared_up_to``."""

    name: str = "paged-sliding-window"
    shared_up_to: int = 512
    sliding_window_only: bool = True

    def applies(self, model) -> bool:
        if model.is_mla or model.encoder:
            return False
        return bool(model.sliding_window) or not self.sliding_window_only

    def paged_reads(self, model, par, decode_tokens, decode_sequences, xp=jnp):
        """(KV tokens the paged kernel reads, extra tokens it reads if every query head re-read its
        KV head), per layer and device, from the decode sequences' attended context; for a model
        the rule ``applies`` to."""
        heads = model.heads / par.tp
        group = heads / max(model.kv_heads / par.tp, 1.0)
        unshared = decode_sequences * heads > self.shared_up_to
        return decode_tokens, xp.where(unshared, (group - 1.0) * decode_tokens, 0.0)


KV_READS = {rule.name: rule for rule in (GroupedKVReads(), PagedKVReads(),
                                         PagedKVReads(name="paged", sliding_window_only=False))}
"""The rules a stack file may name (``decode_attention = { PLATFORM = "NAME" }``)."""
