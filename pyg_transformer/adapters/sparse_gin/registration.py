"""Registration of Sparse-GIN as a peft method (peft's ``register_peft_method``)."""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from pyg_transformer.adapters.sparse_gin.config import (
    PARAMETER_COUNTERS,
    SparseGinConfig,
)
from pyg_transformer.adapters.sparse_gin.model import (
    PREFIX,
    SparseGinModel,
    count_lora_parameters,
    count_sparse_gin_parameters,
)
from pyg_transformer.compat import sparse_gin_peft_type

NAME = "sparse_gin"


def register_sparse_gin() -> None:
    """Make ``peft.get_peft_model(model, SparseGinConfig(...))``,
    ``peft.PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM`` and transformers'
    ``load_adapter`` dispatch to :class:`SparseGinModel`, and give
    :meth:`SparseGinConfig.match_lora` its parameter counters (idempotent)."""
    PARAMETER_COUNTERS.update(lora=count_lora_parameters, sparse_gin=count_sparse_gin_parameters)
    if PEFT_TYPE_TO_TUNER_MAPPING.get(sparse_gin_peft_type()) is SparseGinModel:
        return
    register_peft_method(name=NAME, config_cls=SparseGinConfig, model_cls=SparseGinModel,
                         prefix=PREFIX)
