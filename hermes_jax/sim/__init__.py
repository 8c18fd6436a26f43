"""Serving simulation: scenarios, workloads, the time-stepped JAX simulator and its exact reference."""

from .report import DEFAULT_SCENARIO
from .scenario import Scenario, load_scenario, parse_scenario
from .simulate import Results, simulate
from .workload import Workload, build_workload

__all__ = ["DEFAULT_SCENARIO", "Scenario", "load_scenario", "parse_scenario", "Results", "simulate", "Workload", "build_workload"]
