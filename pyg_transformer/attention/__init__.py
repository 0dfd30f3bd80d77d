"""Graph attention modules: GIN- and PNA-Attention and their per-head adjacency."""

from pyg_transformer.attention.adjacency import (
    ADJACENCY_ACTIVATIONS,
    SPARSE_ACTIVATIONS,
    AdjacencySpec,
    adjacency_block,
    head_graphs,
)
from pyg_transformer.attention.gin_attention import GINAttention
from pyg_transformer.attention.headwise import (
    HeadwiseGINMLP,
    HeadwiseLinear,
    HeadwisePNAMLP,
    HeadwiseRMSNorm,
)
from pyg_transformer.attention.pna_attention import PNAAttention

__all__ = [
    "ADJACENCY_ACTIVATIONS",
    "SPARSE_ACTIVATIONS",
    "AdjacencySpec",
    "GINAttention",
    "HeadwiseGINMLP",
    "HeadwiseLinear",
    "HeadwisePNAMLP",
    "HeadwiseRMSNorm",
    "PNAAttention",
    "adjacency_block",
    "head_graphs",
]
