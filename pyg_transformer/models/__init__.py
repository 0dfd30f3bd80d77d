"""Hugging Face models with graph attention (importing registers the Auto classes)."""

from pyg_transformer.models.graph_llama import (
    GraphLlamaConfig,
    GraphLlamaForCausalLM,
    GraphLlamaModel,
    GraphLlamaPreTrainedModel,
)

__all__ = [
    "GraphLlamaConfig",
    "GraphLlamaForCausalLM",
    "GraphLlamaModel",
    "GraphLlamaPreTrainedModel",
]
