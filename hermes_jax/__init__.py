"""hermes_jax: differentiable, vectorized simulator of multi-stage LLM serving.

Public names; submodules hold the rest (``hermes_jax.kernels``, ``hermes_jax.models.operators``).
"""

from .engine import EngineSpec
from .errors import ConfigError
from .estimate import MemoryFootprint, StaticBatchEstimate, check_fits, memory_footprint, static_batch
from .hardware import Hardware, HardwareParams, SystemSpec, get_hardware, hardware_names
from .iteration import IterationCost, iteration_cost, iteration_time
from .kernels import RooflineOptions
from .models import ModelConfig, get_model, load_hf_config, model_names
from .models.operators import Parallelism

__version__ = "0.1.0"

__all__ = ["EngineSpec", "ConfigError", "MemoryFootprint", "StaticBatchEstimate", "check_fits", "memory_footprint",
           "static_batch", "Hardware", "HardwareParams", "SystemSpec", "get_hardware", "hardware_names",
           "IterationCost", "iteration_cost", "iteration_time", "RooflineOptions", "ModelConfig", "get_model",
           "load_hf_config", "model_names", "Parallelism"]
