"""pyg_transformer: transformer attention as a PyTorch Geometric graph."""

__version__ = "0.1.0"

from pyg_transformer.graph import AttentionGraph, attention_to_graph, qk_to_graph
from pyg_transformer.nn import WeightedGINConv

from pyg_transformer.attention import GINAttention, PNAAttention
from pyg_transformer.models import (  # registers the Auto classes
    GraphLlamaConfig,
    GraphLlamaForCausalLM,
    GraphLlamaModel,
    GraphLlamaPreTrainedModel,
)
from pyg_transformer.adapters import (  # registers the peft method "sparse_gin"
    SparseGinConfig,
    SparseGinModel,
    SparseGinPeftModel,
    get_sparse_gin_model,
)

__all__ = [
    "AttentionGraph",
    "GINAttention",
    "GraphLlamaConfig",
    "GraphLlamaForCausalLM",
    "GraphLlamaModel",
    "GraphLlamaPreTrainedModel",
    "PNAAttention",
    "SparseGinConfig",
    "SparseGinModel",
    "SparseGinPeftModel",
    "WeightedGINConv",
    "attention_to_graph",
    "get_sparse_gin_model",
    "qk_to_graph",
]
