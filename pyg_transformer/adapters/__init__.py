"""Adapters that fine-tune frozen pretrained language models over their attention graphs."""

from pyg_transformer.adapters.sparse_gin import (
    SparseGinConfig,
    SparseGinGNN,
    SparseGinLayer,
    SparseGinModel,
    SparseGinPeftModel,
    get_sparse_gin_model,
)

__all__ = [
    "SparseGinConfig",
    "SparseGinGNN",
    "SparseGinLayer",
    "SparseGinModel",
    "SparseGinPeftModel",
    "get_sparse_gin_model",
]
