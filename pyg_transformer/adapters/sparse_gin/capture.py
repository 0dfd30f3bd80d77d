"""Attention capture: the ``"sparse_gin_<previous>"`` attention and mask functions.

An adapted model runs with the attention implementation ``"sparse_gin_sdpa"`` (or
``"sparse_gin_eager"``, ... after the implementation it had before). The attention
function registered under that name in transformers'
:class:`~transformers.AttentionInterface` returns exactly what the previous
implementation returns, and hands the layer's post-RoPE queries and keys, together with
the attention mask of the call, to the :class:`~pyg_transformer.adapters.SparseGinLayer`
whose merge hook sits on that attention module. The mask function registered under the
same name in :class:`~transformers.AttentionMaskInterface` is the previous
implementation's; without it transformers would drop padding masks for an unknown name.

Everything the graph depends on arrives with the call (queries, keys, mask, scaling,
``sparse_gin_external``), so gradient-checkpointing recomputation, a deep copy or a
compiled graph rebuilds the same edges; the previous implementation is named by the
implementation string itself, which the model config carries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AttentionInterface, AttentionMaskInterface

from pyg_transformer.adapters.sparse_gin.layer import SparseGinLayer
from pyg_transformer.compat import forward_hooks

ATTENTION_PREFIX = "sparse_gin_"
#: transformers' attention and mask functions by implementation name (views of the global
#: registries, which ``register`` updates)
ATTENTION_FUNCTIONS = AttentionInterface()
MASK_FUNCTIONS = AttentionMaskInterface()


def attention_name(previous: str) -> str:
    """The implementation name an adapted model runs with (registered on first use).

    A previous implementation that transformers' interface does not hold (``"eager"``,
    which each model defines itself) is replaced by ``"sdpa"``."""
    previous = previous_implementation(previous)
    if previous not in ATTENTION_FUNCTIONS:
        previous = "sdpa"
    register_attention(previous)
    return ATTENTION_PREFIX + previous


def previous_implementation(name: str) -> str:
    """The implementation a ``"sparse_gin_<previous>"`` name wraps."""
    return name.removeprefix(ATTENTION_PREFIX)


def _owning_layer(module: torch.nn.Module):
    """The :class:`SparseGinLayer` whose merge hook is registered on attention ``module``
    (``None``: this layer is not adapted). Found through the module's own hooks, so a
    deep copy finds its own copy."""
    for hook in forward_hooks(module):
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, SparseGinLayer):
            return owner
    return None


def register_attention(previous: str = "sdpa") -> None:
    """Register ``"sparse_gin_<previous>"`` with transformers' attention and mask
    interfaces (idempotent)."""
    name = ATTENTION_PREFIX + previous
    if name in ATTENTION_FUNCTIONS:
        return

    def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                          value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
        """The previous implementation's output; reports ``query``/``key`` (post RoPE,
        after the KV-cache update) and the call's mask to the adapter of ``module``."""
        attention: Callable = ATTENTION_FUNCTIONS[previous]
        external = kwargs.pop("sparse_gin_external", None)
        output = attention(module, query, key, value, attention_mask, **kwargs)
        layer = _owning_layer(module)
        if layer is not None:
            layer.capture(query, key, attention_mask, scaling=kwargs.get("scaling"),
                          external=external)
        return output

    def mask_function(*args, **kwargs):
        """The previous implementation's mask function."""
        return MASK_FUNCTIONS[previous](*args, **kwargs)

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
