"""GIN-/PNA-Attention Llama, registered with the ``transformers`` Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from pyg_transformer.models.graph_llama.configuration_graph_llama import GraphLlamaConfig
from pyg_transformer.models.graph_llama.modeling_graph_llama import (
    GraphLlamaDecoderLayer,
    GraphLlamaForCausalLM,
    GraphLlamaModel,
    GraphLlamaPreTrainedModel,
)

AutoConfig.register(GraphLlamaConfig.model_type, GraphLlamaConfig, exist_ok=True)
AutoModel.register(GraphLlamaConfig, GraphLlamaModel, exist_ok=True)
AutoModelForCausalLM.register(GraphLlamaConfig, GraphLlamaForCausalLM, exist_ok=True)

__all__ = [
    "GraphLlamaConfig",
    "GraphLlamaDecoderLayer",
    "GraphLlamaForCausalLM",
    "GraphLlamaModel",
    "GraphLlamaPreTrainedModel",
]
