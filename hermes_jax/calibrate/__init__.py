"""Calibration as a library: read measurements, predict them, fit any parameter subset with intervals.

- ``readers.read_static_batch``: LLM-Inference-Bench tables and a generic static-batch CSV;
- ``static.StaticBatchTable``: differentiable predictions of such a table under a stack's KV rule;
- ``fit.fit_parameters``: bounded, optionally prior-weighted fit in log space (Adam, then a
  Levenberg-Marquardt polish) with Laplace intervals, identifiability warnings and a bootstrap;
- ``static_fit.calibrate_static``: a stack on one device fitted to such a table, split by any
  column, scored before and after, written as a stack file and a report;
- ``prefill.fit_gemm_ceiling``: a machine's large-GEMM efficiency from measured time to first
  token, each run predicted with its own engine's values;
- ``ops.read_op_table`` / ``ops.OpTable``: kernel timing tables predicted with the iteration model's
  per-operator terms;
- ``trace_fit.calibrate_trace``: fit through the serving simulator to a request trace's summaries;
- ``traces.read_request_trace``: per-request measurements (AIPerf, vLLM benchmark_serving, LLMPerf,
  CSV) into one frame.
"""

from .ops import OpTable, read_op_table
from .fit import Bound, FitResult, LogHuber, LogSquared, Pinball, Prior, Relative, fit_parameters
from .readers import StaticTable, read_static_batch
from .static import StaticBatchTable
from .static_fit import StaticCalibration, calibrate_static
from .traces import RequestTrace, read_request_trace

__all__ = ["Bound", "FitResult", "LogHuber", "LogSquared", "Pinball", "Prior", "Relative", "fit_parameters",
           "StaticTable", "read_static_batch", "StaticBatchTable", "StaticCalibration", "calibrate_static",
           "RequestTrace", "read_request_trace", "OpTable", "read_op_table"]
