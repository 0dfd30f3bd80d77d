"""The one peft workaround Sparse-GIN needs, behind a version check.

peft keys its method registry (``peft.utils.register_peft_method``) by members of
:class:`peft.utils.PeftType`, a closed :class:`enum.Enum`, so an out-of-tree method first
needs a ``SPARSE_GIN`` member. It is added once, the way :mod:`enum` builds members (same
name, value and type as the built-in ones), on the peft releases this was checked against.
"""

from __future__ import annotations

import peft
from packaging.version import Version
from peft.utils import PeftType

#: the peft releases the ``PeftType`` extension was written and tested for
PEFT_SUPPORTED = (Version("0.21"), Version("0.22"))
PEFT_TYPE_NAME = "SPARSE_GIN"


def check_peft_version(version: str = peft.__version__) -> None:
    """Raise ``ImportError`` for a peft outside :data:`PEFT_SUPPORTED` ``[low, high)``."""
    low, high = PEFT_SUPPORTED
    if not low <= Version(version) < high:
        raise ImportError(
            f"pyg_transformer's Sparse-GIN registers a PeftType member the way peft {low} "
            f"builds its enum; peft {version} is outside the supported range >={low},<{high} "
            f"(install the locked version: pip install 'peft>={low},<{high}')")


def sparse_gin_peft_type() -> PeftType:
    """The ``PeftType.SPARSE_GIN`` member (created on first use)."""
    member = PeftType._member_map_.get(PEFT_TYPE_NAME)
    if member is None:
        check_peft_version()
        member = str.__new__(PeftType, PEFT_TYPE_NAME)
        member._name_ = PEFT_TYPE_NAME
        member._value_ = PEFT_TYPE_NAME
        member.__objclass__ = PeftType
        member.__init__(PEFT_TYPE_NAME)
        type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
        PeftType._member_map_[PEFT_TYPE_NAME] = member
        PeftType._value2member_map_[PEFT_TYPE_NAME] = member
        PeftType._member_names_.append(PEFT_TYPE_NAME)
    return member
