"""Sparse-GIN: fine-tune a frozen causal LM with a GNN over its own attention graph.

Public API: :class:`SparseGinConfig`, :func:`get_sparse_gin_model`,
:class:`SparseGinPeftModel`, :class:`SparseGinModel` (the peft tuner),
:class:`SparseGinGNN`, :class:`SparseGinLayer`. Importing this package registers the
``sparse_gin`` method with peft (``peft.get_peft_model``, ``PeftModel.from_pretrained``,
``AutoPeftModelForCausalLM`` and transformers' ``load_adapter`` then know it).
"""

from pyg_transformer.adapters.sparse_gin.config import SparseGinConfig
from pyg_transformer.adapters.sparse_gin.layer import SparseGinGNN, SparseGinLayer
from pyg_transformer.adapters.sparse_gin.model import (
    SparseGinModel,
    SparseGinPeftModel,
    find_decoder_layers,
)
from pyg_transformer.adapters.sparse_gin.registration import register_sparse_gin


def get_sparse_gin_model(
    model, config: SparseGinConfig, adapter_name: str = "default"
) -> SparseGinPeftModel:
    """Freeze ``model`` and attach one Sparse-GIN adapter per target decoder layer: the
    same as ``peft.get_peft_model(model, config, adapter_name)``, returning a
    :class:`SparseGinPeftModel` (a ``PeftModelForCausalLM`` with an atomic
    ``save_pretrained``).

    Raises:
        TypeError: ``config`` is not a :class:`SparseGinConfig`.
        ValueError: for an unsupported model, an invalid configuration or a model that
            already carries a Sparse-GIN adapter (use ``add_adapter`` on its PeftModel);
            ``model`` is left unmodified then.
    """
    if not isinstance(config, SparseGinConfig):
        raise TypeError(f"config must be a SparseGinConfig, got {type(config).__name__}")
    return SparseGinPeftModel(model, config, adapter_name)


register_sparse_gin()

__all__ = [
    "SparseGinConfig",
    "SparseGinGNN",
    "SparseGinLayer",
    "SparseGinModel",
    "SparseGinPeftModel",
    "find_decoder_layers",
    "get_sparse_gin_model",
]
