"""mdcm: modular deep causal generative models (Rahman & Kocaoglu, ICML 2024)."""

from .graph import CausalGraph, GraphError, parse_graph

__version__ = "0.1.0"
__all__ = ["CausalGraph", "GraphError", "parse_graph", "__version__"]
