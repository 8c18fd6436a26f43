"""Multi-stage pipelines: shared resources, stages, and the runner (``simulate_pipeline``)."""

from .run import simulate_pipeline

__all__ = ["simulate_pipeline"]
