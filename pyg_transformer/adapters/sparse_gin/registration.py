"""Registration of Sparse-GIN as a peft method (peft's ``register_peft_method``).

peft keys its method registry by members of :class:`peft.utils.PeftType`, a closed enum,
so an out-of-tree method first needs a ``SPARSE_GIN`` member; it is added once, in the
way :mod:`enum` itself builds members (same name, value and type as the built-in ones).
"""

from __future__ import annotations

from peft.utils import PeftType

NAME = "sparse_gin"
PREFIX = "sparse_gin_"


def sparse_gin_peft_type() -> PeftType:
    """The ``PeftType.SPARSE_GIN`` member (created on first use)."""
    key = NAME.upper()
    member = PeftType._member_map_.get(key)
    if member is None:
        member = str.__new__(PeftType, key)
        member._name_ = key
        member._value_ = key
        member.__objclass__ = PeftType
        member.__init__(key)
        type.__setattr__(PeftType, key, member)
        PeftType._member_map_[key] = member
        PeftType._value2member_map_[key] = member
        PeftType._member_names_.append(key)
    return member


def register_sparse_gin() -> None:
    """Make ``peft.get_peft_model(model, SparseGinConfig(...))`` and
    ``peft.PeftModel.from_pretrained`` dispatch to :class:`SparseGinModel` (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from pyg_transformer.adapters.sparse_gin.config import SparseGinConfig
    from pyg_transformer.adapters.sparse_gin.model import SparseGinModel

    peft_type = sparse_gin_peft_type()
    if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is SparseGinModel:
        return
    register_peft_method(
        name=NAME, config_cls=SparseGinConfig, model_cls=SparseGinModel, prefix=PREFIX
    )
