"""pyg_transformer: transformer attention as a PyTorch Geometric graph."""

from pyg_transformer.graph import AttentionGraph, attention_to_graph, qk_to_graph
from pyg_transformer.nn import WeightedGINConv

__version__ = "0.1.0"

__all__ = [
    "AttentionGraph",
    "WeightedGINConv",
    "attention_to_graph",
    "qk_to_graph",
]
