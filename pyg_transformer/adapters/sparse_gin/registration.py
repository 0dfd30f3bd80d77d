"""Registration of Sparse-GIN as a peft method (peft's ``register_peft_method``)."""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from pyg_transformer.adapters.sparse_gin.compat import sparse_gin_peft_type
from pyg_transformer.adapters.sparse_gin.config import SparseGinConfig
from pyg_transformer.adapters.sparse_gin.model import PREFIX, SparseGinModel

NAME = "sparse_gin"


def register_sparse_gin() -> None:
    """Make ``peft.get_peft_model(model, SparseGinConfig(...))``,
    ``peft.PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM`` and transformers'
    ``load_adapter`` dispatch to :class:`SparseGinModel` (idempotent)."""
    if PEFT_TYPE_TO_TUNER_MAPPING.get(sparse_gin_peft_type()) is SparseGinModel:
        return
    register_peft_method(name=NAME, config_cls=SparseGinConfig, model_cls=SparseGinModel,
                         prefix=PREFIX)
