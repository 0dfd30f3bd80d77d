"""Attention as a graph: build batched causal PyG graphs from attention.

The graph core of the library: :mod:`~pyg_transformer.graph.scoring` (the one chunked,
causal, grouped-query scorer and the adjacency chain), :mod:`~pyg_transformer.graph.
construction` (:func:`attention_to_graph`, :func:`qk_to_graph`, :func:`decode_row_graph`)
and :mod:`~pyg_transformer.graph.validation` (the argument checks of every entry point).
"""

from pyg_transformer.graph.attention_graph import AttentionGraph, DecodeRow
from pyg_transformer.graph.construction import (
    attention_to_graph,
    decode_row_graph,
    qk_to_graph,
)
from pyg_transformer.graph.validation import check_graph_options
from pyg_transformer.options import HEAD_REDUCTIONS

__all__ = [
    "HEAD_REDUCTIONS",
    "AttentionGraph",
    "DecodeRow",
    "attention_to_graph",
    "check_graph_options",
    "decode_row_graph",
    "qk_to_graph",
]
