"""Gradient-based hardware co-design: ``DesignProblem`` (variables, objective, SLO constraints, a
price and power model), ``ServingDesignProblem`` (serving knobs too: TP, max batch, chunk size,
replicas) and search methods compared at equal simulator evaluations."""

from .cost import CostModel, catalog_cost_model
from .problem import Constraint, DesignProblem, Variable
from .search import SearchResult, cmaes_search, gradient_search, random_search
from .serving import ServingDesignProblem, ServingKnob, serving_search
from .trust_region import trust_region_search

__all__ = ["CostModel", "catalog_cost_model", "Constraint", "DesignProblem", "Variable", "SearchResult",
           "ServingDesignProblem", "ServingKnob", "serving_search", "gradient_search", "trust_region_search", "random_search", "cmaes_search"]
