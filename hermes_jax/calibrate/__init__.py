"""Calibration as a library: read measurements, predict them, fit any parameter subset with intervals.

- ``readers.read_static_batch``: LLM-Inference-Bench tables and a generic static-batch CSV;
- ``static.StaticBatchTable``: differentiable predictions of such a table under a stack's KV rule;
- ``fit.fit_parameters``: bounded, optionally prior-weighted fit in log space (Adam, then L-BFGS)
  with Laplace intervals, identifiability warnings and an optional bootstrap.
"""

from .fit import Bound, FitResult, LogHuber, LogSquared, Pinball, Prior, Relative, fit_parameters
from .readers import StaticTable, read_static_batch
from .static import StaticBatchTable

__all__ = ["Bound", "FitResult", "LogHuber", "LogSquared", "Pinball", "Prior", "Relative", "fit_parameters",
           "StaticTable", "read_static_batch", "StaticBatchTable"]
