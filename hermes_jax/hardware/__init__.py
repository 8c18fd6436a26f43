"""Hardware: differentiable parameters, static structure and the shipped catalog."""

from .catalog import Catalog, Hardware, SystemSpec, default_catalog, get_hardware, hardware_names
from .params import DTYPES, FIELDS, TIERS, HardwareParams, stack

__all__ = ["Catalog", "Hardware", "SystemSpec", "default_catalog", "get_hardware", "hardware_names",
           "DTYPES", "FIELDS", "TIERS", "HardwareParams", "stack"]
