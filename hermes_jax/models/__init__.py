"""Model descriptions and per-operator FLOP / byte accounting."""

from .config import DTYPE_BYTES, ModelConfig, dtype_bytes, from_hf_dict, get_model, load_hf_config, model_names

__all__ = ["DTYPE_BYTES", "ModelConfig", "dtype_bytes", "from_hf_dict", "get_model", "load_hf_config", "model_names"]
