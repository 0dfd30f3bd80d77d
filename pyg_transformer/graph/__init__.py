"""Attention as a graph: build batched causal PyG graphs from attention.

Public API: :class:`AttentionGraph`, :func:`attention_to_graph`, :func:`qk_to_graph`.
"""

from pyg_transformer.graph.attention_graph import AttentionGraph
from pyg_transformer.graph.construction import (
    HEAD_REDUCTIONS,
    attention_to_graph,
    check_graph_options,
    qk_to_graph,
)

__all__ = [
    "HEAD_REDUCTIONS",
    "AttentionGraph",
    "attention_to_graph",
    "check_graph_options",
    "qk_to_graph",
]
