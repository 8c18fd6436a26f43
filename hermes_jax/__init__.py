"""hermes_jax: differentiable, vectorized simulator of multi-stage LLM serving.

Public names; submodules hold the rest (``hermes_jax.kernels``, ``hermes_jax.models.operators``).
Names are imported on first use, so ``hermes-jax --help`` and ``--version`` start without JAX.
"""

from __future__ import annotations

from ._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "EngineSpec": ".engine", "ConfigError": ".errors", "MemoryFootprint": ".estimate",
    "StaticBatchEstimate": ".estimate", "check_fits": ".estimate", "memory_footprint": ".estimate",
    "static_batch": ".estimate", "Hardware": ".hardware", "HardwareParams": ".hardware", "SystemSpec": ".hardware",
    "get_hardware": ".hardware", "hardware_names": ".hardware", "IterationCost": ".iteration",
    "iteration_cost": ".iteration", "iteration_time": ".iteration", "RooflineOptions": ".kernels",
    "ModelConfig": ".models", "get_model": ".models", "load_hf_config": ".models", "model_names": ".models",
    "Parallelism": ".models.operators", "Scenario": ".sim.scenario", "load_scenario": ".sim.scenario",
    "simulate": ".sim.simulate", "Results": ".sim.simulate",
}

__all__ = sorted(_PUBLIC)


__getattr__ = lazy_attributes(__name__, _PUBLIC)


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
