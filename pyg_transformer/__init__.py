"""pyg_transformer: transformer attention as a PyTorch Geometric graph.

The public names are imported on first access. Importing the package registers the
``graph_llama`` Auto classes and the ``sparse_gin`` peft method, except in the
``pyg-transformer`` command line, which imports torch only for the commands that need it
(see :mod:`pyg_transformer._lazy`).
"""

__version__ = "0.1.0"

from pyg_transformer._lazy import lazy_module, register_unless_cli

_EXPORTS = {
    "AttentionGraph": "pyg_transformer.graph",
    "attention_to_graph": "pyg_transformer.graph",
    "qk_to_graph": "pyg_transformer.graph",
    "WeightedGINConv": "pyg_transformer.nn",
    "GINAttention": "pyg_transformer.attention",
    "PNAAttention": "pyg_transformer.attention",
    "GraphLlamaConfig": "pyg_transformer.models",
    "GraphLlamaForCausalLM": "pyg_transformer.models",
    "GraphLlamaModel": "pyg_transformer.models",
    "GraphLlamaPreTrainedModel": "pyg_transformer.models",
    "SparseGinConfig": "pyg_transformer.adapters",
    "SparseGinModel": "pyg_transformer.adapters",
    "SparseGinPeftModel": "pyg_transformer.adapters",
    "get_sparse_gin_model": "pyg_transformer.adapters",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_module(__name__, _EXPORTS)
register_unless_cli()
