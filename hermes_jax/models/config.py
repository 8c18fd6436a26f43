"""Transformer configurations: the catalog, Hugging Face ``config.json`` loading, weight and KV sizes.

A ``ModelConfig`` is static (hashable) configuration: it fixes array shapes and operator lists, so
it is a static argument of jitted functions and never differentiated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError
from ..tomlio import load_toml

DATA = Path(__file__).parent / "data"

# Bytes per stored element. int4/fp4 include one bf16 scale per group of 128 weights (AWQ/GPTQ style).
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
               "int4": 0.5 + 2.0 / 128, "fp4": 0.5 + 2.0 / 128}
# Compute dtype implied by a weight dtype: 4-bit weights are dequantised to bf16 unless the part
# runs fp4 natively (the catalog carries the emulated rate for parts that do not).
COMPUTE_DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp16": "bf16", "fp8": "fp8", "int8": "int8",
                 "int4": "bf16", "fp4": "fp4"}

_GATED_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v2",
                "deepseek_v3", "gemma", "gemma2", "gemma3", "phi3", "olmo", "olmo2", "granite", "cohere"}
_PARALLEL_BLOCK_TYPES = {"phi", "gptj", "cohere", "gpt_neox"}
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra",
                  "nomic_bert", "modernbert"}
_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
            "n_inner": "intermediate_size", "n_positions": "max_position_embeddings"}


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a transformer. Counts are integers; no field is differentiable."""

    name: str
    hidden: int                   # d, model width
    layers: int
    heads: int                    # query heads
    kv_heads: int                 # key/value heads (== heads for MHA, fewer for GQA)
    head_dim: int
    ffn: int                      # intermediate size of a dense MLP
    vocab: int
    max_context: int              # tokens
    gated_mlp: bool = True        # SwiGLU-style 3-matrix MLP, else 2-matrix
    encoder: bool = False         # bidirectional encoder: no KV cache, no decode, no LM head
    sliding_window: int = 0       # tokens of context each layer attends to; 0 = full
    tie_embeddings: bool = False
    parallel_block: bool = False  # attention and MLP read one norm's output; x + attn + mlp once per layer
    # Mixture of experts (0 experts = dense)
    experts: int = 0
    top_k: int = 0
    expert_ffn: int = 0
    shared_experts: int = 0
    first_dense_layers: int = 0   # leading layers with a dense MLP (DeepSeek first_k_dense_replace)
    # Multi-head latent attention (kv_lora_rank 0 = standard attention)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    hf_id: str = ""

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_dense_layers if self.is_moe else 0

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    def attention_params(self) -> int:
        d, h = self.hidden, self.heads
        if self.is_mla:
            qk = self.qk_nope_dim + self.qk_rope_dim
            q = d * self.q_lora_rank + self.q_lora_rank * h * qk if self.q_lora_rank else d * h * qk
            kv = d * (self.kv_lora_rank + self.qk_rope_dim) + self.kv_lora_rank * h * (self.qk_nope_dim + self.v_head_dim)
            return q + kv + h * self.v_head_dim * d
        return d * (h + 2 * self.kv_heads) * self.head_dim + h * self.head_dim * d

    def mlp_params(self, ffn: int) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden * ffn

    def moe_layer_params(self) -> tuple[int, int]:
        """(always-read parameters: router + shared experts, routed-expert parameters) per MoE layer."""
        always = self.hidden * self.experts + self.shared_experts * self.mlp_params(self.expert_ffn)
        return always, self.experts * self.mlp_params(self.expert_ffn)

    def param_count(self) -> int:
        """Total parameters (weights), embeddings and LM head included."""
        per_layer = self.attention_params() + 2 * self.hidden
        total = self.layers * per_layer + self.dense_layers * self.mlp_params(self.ffn)
        if self.is_moe:
            always, routed = self.moe_layer_params()
            total += self.moe_layers * (always + routed)
        embed = self.vocab * self.hidden
        head = 0 if (self.tie_embeddings or self.encoder) else self.vocab * self.hidden
        return total + embed + head + self.hidden

    def weight_bytes(self, dtype: str = "bf16") -> float:
        return self.param_count() * dtype_bytes(dtype)

    def kv_elems_per_token_layer(self) -> int:
        """Elements stored per token per layer: K and V per KV head, or the MLA latent."""
        if self.encoder:
            return 0
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype: str = "bf16") -> float:
        """KV-cache bytes per token of context over all layers (whole model, before TP sharding)."""
        return self.layers * self.kv_elems_per_token_layer() * dtype_bytes(dtype)

    def kv_tokens(self, context: int) -> int:
        """Tokens a sequence of ``context`` tokens keeps in its KV cache (sliding window caps it)."""
        return min(context, self.sliding_window) if self.sliding_window else context


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


def _int(cfg: dict, key: str, source: str, default=None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"{source}: missing field {key!r} (required for a transformer config)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ConfigError(f"{source}: field {key!r} must be a non-negative integer, got {value!r}")
    return int(value)


def from_hf_dict(cfg: dict, name: str, source: str = "<config>") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face ``config.json`` dictionary."""
    cfg = dict(cfg)
    for alias, key in _ALIASES.items():
        if alias in cfg and key not in cfg:
            cfg[key] = cfg[alias]
    if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers keep the LM inside
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "")}
    model_type = str(cfg.get("model_type", "llama")).lower()
    d = _int(cfg, "hidden_size", source)
    layers = _int(cfg, "num_hidden_layers", source)
    heads = _int(cfg, "num_attention_heads", source)
    vocab = _int(cfg, "vocab_size", source)
    if heads == 0 or d == 0 or layers == 0:
        raise ConfigError(f"{source}: hidden_size, num_hidden_layers and num_attention_heads must be > 0")
    kv_heads = _int(cfg, "num_key_value_heads", source, heads) or heads
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    head_dim = _int(cfg, "head_dim", source, d // heads) or d // heads
    ffn = cfg.get("intermediate_size")
    ffn = 4 * d if ffn is None and model_type in ("gpt2",) else ffn
    if ffn is None:
        raise ConfigError(f"{source}: missing field 'intermediate_size' (required for a transformer config)")
    ffn = _int({"intermediate_size": ffn}, "intermediate_size", source)
    experts = _int(cfg, "num_local_experts", source, 0) or _int(cfg, "n_routed_experts", source, 0) or _int(cfg, "num_experts", source, 0)
    top_k = _int(cfg, "num_experts_per_tok", source, 2 if experts else 0)
    gated = cfg.get("use_gated_mlp")
    if gated is None:
        gated = model_type in _GATED_TYPES or (model_type not in _ENCODER_TYPES and str(cfg.get("hidden_act", "silu")) in ("silu", "swish"))
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    return ModelConfig(
        name=name, hidden=d, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, ffn=ffn,
        vocab=vocab, max_context=_int(cfg, "max_position_embeddings", source, 4096),
        gated_mlp=bool(gated), encoder=model_type in _ENCODER_TYPES,
        sliding_window=int(window or 0), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        parallel_block=bool(cfg.get("parallel_attn", cfg.get("use_parallel_residual", model_type in _PARALLEL_BLOCK_TYPES))),
        experts=experts, top_k=top_k if experts else 0,
        expert_ffn=_int(cfg, "moe_intermediate_size", source, ffn) if experts else 0,
        shared_experts=_int(cfg, "n_shared_experts", source, 0) if experts else 0,
        first_dense_layers=_int(cfg, "first_k_dense_replace", source, 0) if experts else 0,
        q_lora_rank=_int(cfg, "q_lora_rank", source, 0), kv_lora_rank=_int(cfg, "kv_lora_rank", source, 0),
        qk_nope_dim=_int(cfg, "qk_nope_head_dim", source, 0), qk_rope_dim=_int(cfg, "qk_rope_head_dim", source, 0),
        v_head_dim=_int(cfg, "v_head_dim", source, 0), hf_id=str(cfg.get("hf_id", cfg.get("_name_or_path", ""))),
    )


def load_hf_config(path: str | Path, name: str | None = None) -> ModelConfig:
    """Load a local Hugging Face ``config.json`` (errors name the file and the missing field)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return from_hf_dict(cfg, name or path.parent.name or path.stem, source=str(path))


_CATALOG: dict[str, ModelConfig] | None = None


def _catalog() -> dict[str, ModelConfig]:
    global _CATALOG
    if _CATALOG is None:
        path = DATA / "models.toml"
        _CATALOG = {name: from_hf_dict(cfg, name, f"{path} [{name}]") for name, cfg in load_toml(path).items()}
    return _CATALOG


def model_names() -> list[str]:
    return sorted(_catalog())


def get_model(name: str, **overrides) -> ModelConfig:
    """A catalog model by name (``llama-2-70b``, ``qwen2.5-72b``...); overrides replace fields."""
    try:
        model = _catalog()[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(model_names())} "
                          "(or pass a config.json path)") from None
    return replace(model, **overrides) if overrides else model
