"""In-degree histograms of causal attention graphs for :class:`~torch_geometric.nn.PNAConv`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch_geometric.nn import PNAConv

from pyg_transformer.graph import AttentionGraph


def causal_degree_histogram(seq_len: int, top_k: int | None = None) -> Tensor:
    r"""Histogram of in-degrees of a complete causal graph of ``seq_len`` tokens.

    Token ``t`` receives from keys ``0..t`` (itself included), so its in-degree is
    :math:`\min(t + 1, k)` with per-row top-``k``. ``hist[d]`` counts the nodes of
    degree ``d``, the ``deg`` argument :class:`~torch_geometric.nn.PNAConv` expects.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
    ):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    degrees = torch.arange(1, seq_len + 1)
    if top_k is not None:
        degrees = degrees.clamp(max=top_k)
    return torch.bincount(degrees)


def degree_histogram(graphs: AttentionGraph | Iterable[AttentionGraph]) -> Tensor:
    """Histogram of the observed in-degrees of one or more :class:`AttentionGraph`."""
    if isinstance(graphs, AttentionGraph):
        graphs = [graphs]
    return PNAConv.get_degree_histogram(graphs)
