"""Sparse-GIN: fine-tune a frozen causal LM with a GNN over its own attention graph (SPEC §4).

Public API: :class:`SparseGinConfig`, :func:`get_sparse_gin_model`,
:class:`SparseGinModel`, :class:`SparseGinGNN`, :class:`SparseGinLayer`. Importing this
package registers the ``"sparse_gin"`` attention/mask functions with transformers and the
``sparse_gin`` method with peft.
"""

from pyg_transformer.adapters.sparse_gin.capture import register_attention
from pyg_transformer.adapters.sparse_gin.config import SparseGinConfig
from pyg_transformer.adapters.sparse_gin.layer import SparseGinGNN, SparseGinLayer
from pyg_transformer.adapters.sparse_gin.model import SparseGinModel, find_decoder_layers
from pyg_transformer.adapters.sparse_gin.registration import register_sparse_gin


def get_sparse_gin_model(
    model, config: SparseGinConfig, adapter_name: str = "default"
) -> SparseGinModel:
    """Freeze ``model`` and attach one Sparse-GIN adapter per target decoder layer.

    Args:
        model: a Hugging Face causal LM (its attention must go through transformers'
            ``AttentionInterface``).
        config: the adapter configuration.
        adapter_name: the adapter's name.

    Raises:
        ValueError: for an unsupported model, an invalid configuration or a model that
            already carries a Sparse-GIN adapter (``unload()`` that one first); ``model``
            is left unmodified then.
    """
    if not isinstance(config, SparseGinConfig):
        raise TypeError(f"config must be a SparseGinConfig, got {type(config).__name__}")
    return SparseGinModel(model, config, adapter_name)


register_attention()
register_sparse_gin()

__all__ = [
    "SparseGinConfig",
    "SparseGinGNN",
    "SparseGinLayer",
    "SparseGinModel",
    "find_decoder_layers",
    "get_sparse_gin_model",
]
