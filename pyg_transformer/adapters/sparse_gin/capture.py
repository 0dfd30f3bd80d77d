"""Attention capture: the ``"sparse_gin"`` attention and mask functions.

The adapted model runs with ``config._attn_implementation = "sparse_gin"``. The
attention function registered under that name in transformers'
:class:`~transformers.AttentionInterface` returns exactly what the model's previous
implementation (SDPA by default) returns, and hands the layer's post-RoPE queries and
keys to the adapter owning that attention module, which turns them into the layer's
sparse attention graph with :func:`pyg_transformer.graph.qk_to_graph`. The mask function
registered in :class:`~transformers.masking_utils.AttentionMaskInterface` is the previous
implementation's (SDPA's by default); without it transformers would drop padding masks
for an unknown implementation name.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    sdpa_mask,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION_NAME = "sparse_gin"

# attention module -> callback(module, query, key, kwargs) of the adapter owning it
_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# attention module -> weak reference to the adapter (SparseGinModel) owning it
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# id(model config) -> name of the attention implementation the model had before
_PREVIOUS: dict[int, str] = {}


def _previous(config) -> str:
    return _PREVIOUS.get(id(config), "sdpa")


def sparse_gin_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The previous attention implementation's output; reports ``query``/``key`` (post
    RoPE, after the KV-cache update) to the Sparse-GIN adapter of ``module``."""
    previous = _previous(getattr(module, "config", None))
    attention: Callable = ALL_ATTENTION_FUNCTIONS._global_mapping.get(
        previous, sdpa_attention_forward
    )
    if attention is sparse_gin_attention_forward:
        attention = sdpa_attention_forward
    output = attention(module, query, key, value, attention_mask, **kwargs)
    capture = _CAPTURES.get(module)
    if capture is not None:
        capture(module, query, key, kwargs)
    return output


def sparse_gin_mask(*args, config=None, **kwargs):
    """The previous implementation's mask function (SDPA's boolean mask by default)."""
    previous = _previous(config)
    mask_function = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(previous, sdpa_mask)
    if mask_function is sparse_gin_mask:
        mask_function = sdpa_mask
    return mask_function(*args, config=config, **kwargs)


def register_attention() -> None:
    """Register ``"sparse_gin"`` with transformers' attention and mask interfaces."""
    AttentionInterface.register(ATTENTION_NAME, sparse_gin_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sparse_gin_mask)


def set_capture(module: torch.nn.Module, callback: Callable | None, owner=None) -> None:
    """Route the queries/keys of attention ``module`` to ``callback`` of adapter ``owner``
    (``callback=None``: stop)."""
    if callback is None:
        _CAPTURES.pop(module, None)
        _OWNERS.pop(module, None)
    else:
        _CAPTURES[module] = callback
        _OWNERS[module] = weakref.ref(owner)


def capture_owner(module: torch.nn.Module):
    """The adapter whose capture is attached to attention ``module`` (``None``: none; the
    callback keeps its adapter alive, so a registered owner is never collected)."""
    ref = _OWNERS.get(module)
    return ref() if ref is not None else None


def set_previous_implementation(config, name: str | None) -> None:
    """Remember (``None``: forget) the implementation ``config`` used before."""
    if name is None:
        _PREVIOUS.pop(id(config), None)
    else:
        _PREVIOUS[id(config)] = name
