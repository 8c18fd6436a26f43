"""Static description of one serving engine: model, node type, parallel layout, dtypes, options.

Everything here fixes shapes or control flow, so an ``EngineSpec`` is hashable and passed to jitted
functions as a static argument. It is validated when built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError
from .hardware.catalog import SystemSpec
from .hardware.params import DTYPES
from .kernels.collectives import ALGORITHMS
from .kernels.roofline import RooflineOptions
from .models.config import COMPUTE_DTYPE, DTYPE_BYTES, ModelConfig
from .models.operators import Parallelism

KV_DTYPES = ("bf16", "fp16", "fp8", "int8", "fp32")


def default_kv_dtype(weight_dtype: str) -> str:
    """The KV cache's dtype when none is given: the weights' for 8/16-bit weights, bf16 otherwise."""
    return weight_dtype if weight_dtype in KV_DTYPES else "bf16"


@dataclass(frozen=True)
class EngineSpec:
    model: ModelConfig
    system: SystemSpec
    parallel: Parallelism = field(default_factory=Parallelism)
    weight_dtype: str = "bf16"
    kv_dtype: str = ""            # "" = same as weights for 8/16-bit weights, bf16 for 4-bit
    compute_dtype: str = ""       # "" = implied by the weight dtype (models.config.COMPUTE_DTYPE)
    roofline: RooflineOptions = field(default_factory=RooflineOptions)
    collective: str = "ring"      # all-reduce algorithm: ring | tree | auto

    def __post_init__(self):
        par = self.parallel
        for name in ("tp", "pp", "ep"):
            value = getattr(par, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"parallel.{name} must be an integer >= 1, got {value!r}")
        if self.weight_dtype not in DTYPE_BYTES:
            raise ConfigError(f"weight_dtype {self.weight_dtype!r} unknown; allowed: {', '.join(DTYPE_BYTES)}")
        if not self.kv_dtype:
            object.__setattr__(self, "kv_dtype", default_kv_dtype(self.weight_dtype))
        if self.kv_dtype not in KV_DTYPES:
            raise ConfigError(f"kv_dtype {self.kv_dtype!r} unknown; allowed: {', '.join(KV_DTYPES)}")
        if not self.compute_dtype:
            object.__setattr__(self, "compute_dtype", COMPUTE_DTYPE[self.weight_dtype])
        if self.compute_dtype not in DTYPES:
            raise ConfigError(f"compute_dtype {self.compute_dtype!r} unknown; allowed: {', '.join(DTYPES)}")
        if self.collective not in ALGORITHMS:
            raise ConfigError(f"collective {self.collective!r} unknown; allowed: {', '.join(ALGORITHMS)}")
        m = self.model
        if m.heads % par.tp and par.tp % m.heads:
            raise ConfigError(f"tp={par.tp} does not divide {m.name}'s {m.heads} attention heads")
        if par.pp > m.layers:
            raise ConfigError(f"pp={par.pp} exceeds {m.name}'s {m.layers} layers")
        if par.ep > 1 and (not m.is_moe or m.experts % par.ep):
            raise ConfigError(f"ep={par.ep} needs a MoE model whose expert count it divides "
                              f"({m.name} has {m.experts} experts)")

    @property
    def act_dtype(self) -> str:
        return "fp32" if self.compute_dtype == "fp32" else "bf16"

    @property
    def devices(self) -> int:
        return self.parallel.devices
