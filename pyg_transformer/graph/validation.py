"""Argument checks shared by every entry point of the graph core (:func:`qk_to_graph`,
:func:`attention_to_graph`, the per-head graphs of GIN-/PNA-Attention and the Sparse-GIN
adapter). Each raises ``TypeError``/``ValueError`` naming the bad argument and value."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from pyg_transformer.options import HEAD_REDUCTIONS


def is_number(value) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_positive_finite(value) -> bool:
    return is_number(value) and 0 < value < math.inf


def check_positive_int(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_positive_finite(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in ``(0, inf)``."""
    if not is_positive_finite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_graph_options(
    *,
    head_reduction: str = "sum",
    clamp: float | None = 1.0,
    sharpen_alpha: float | None = None,
    sharpen_tau: float = 0.0,
    threshold: float = 0.0,
    top_k: int | None = None,
) -> None:
    """Validate the sparsification options shared by every graph builder.

    Every number must be finite: ``clamp=inf`` is refused (``None`` is the spelling of
    "no clamp"), as are an infinite ``sharpen_tau`` or ``threshold`` (both would remove
    every edge).

    Raises:
        ValueError: naming the offending argument and value.
    """
    if head_reduction not in HEAD_REDUCTIONS:
        raise ValueError(
            f"head_reduction must be one of {HEAD_REDUCTIONS}, got {head_reduction!r}"
        )
    if clamp is not None and not is_positive_finite(clamp):
        raise ValueError(
            f"clamp must be a positive finite number or None (no clamp), got {clamp!r}"
        )
    if sharpen_alpha is not None and not is_positive_finite(sharpen_alpha):
        raise ValueError(
            f"sharpen_alpha must be a positive finite number or None, got {sharpen_alpha!r}"
        )
    if not is_number(sharpen_tau) or not math.isfinite(sharpen_tau):
        raise ValueError(f"sharpen_tau must be a finite number, got {sharpen_tau!r}")
    if not is_number(threshold) or not 0 <= threshold < math.inf:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if sharpen_alpha is not None and not threshold < 1:
        raise ValueError(
            f"threshold must lie in [0, 1) after sigmoid sharpening, got {threshold!r}"
        )
    if top_k is not None:
        check_positive_int("top_k", top_k)


def check_scores_input(name: str, tensor, dims: tuple[int, ...], shape: str) -> None:
    """``tensor`` must be a floating point tensor with one of ``dims`` dimensions."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() not in dims:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {tensor.dtype}")


def check_query_key(query, key) -> None:
    """Post-RoPE ``query [B, H, Tq, d]`` and grouped-query ``key [B, Hkv, Tk, d]``."""
    for name, tensor in (("query", query), ("key", key)):
        check_scores_input(name, tensor, (4,), "[B, heads, T, d]")
    if query.dtype != key.dtype:
        raise TypeError(
            f"query and key must have the same dtype, got query.dtype={query.dtype} and "
            f"key.dtype={key.dtype}"
        )
    batch_size, num_heads, _, head_dim = query.shape
    if key.size(0) != batch_size or key.size(-1) != head_dim:
        raise ValueError(
            f"key must have shape [B={batch_size}, Hkv, Tk, d={head_dim}], "
            f"got {tuple(key.shape)}"
        )
    if num_heads % key.size(1) != 0:
        raise ValueError(
            f"the number of query heads ({num_heads}) must be a multiple of the number "
            f"of key heads ({key.size(1)})"
        )


def check_scaling(scaling) -> None:
    check_positive_finite("scaling", scaling)


def check_padding_mask(attention_mask, batch_size: int, num_keys: int) -> Tensor | None:
    """The ``[B, Tk]`` padding mask (1 = real token) as bool, or ``None``."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask must be a tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != (batch_size, num_keys):
        raise ValueError(
            f"attention_mask must have shape [B, Tk] = [{batch_size}, {num_keys}], "
            f"got {tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()


def check_visible(visible, batch_size: int, num_queries: int, num_keys: int) -> None:
    """An optional bool ``[B, Tq, Tk]`` visibility (e.g. a sliding-window mask)."""
    if visible is not None and (not isinstance(visible, Tensor) or visible.dtype != torch.bool
                                or visible.shape != (batch_size, num_queries, num_keys)):
        raise ValueError(
            f"visible must be a bool tensor of shape [B, Tq, Tk] = [{batch_size}, "
            f"{num_queries}, {num_keys}], got {getattr(visible, 'dtype', type(visible))} "
            f"{tuple(getattr(visible, 'shape', ()))}"
        )


def check_external(external, batch_size: int, num_queries: int, num_keys: int) -> None:
    """An optional floating point external adjacency ``[B, Tq, Tk]``."""
    if external is None:
        return
    if not isinstance(external, Tensor):
        raise TypeError(f"external must be a tensor, got {type(external).__name__}")
    if not external.is_floating_point():
        raise TypeError(f"external must be a floating point tensor, got {external.dtype}")
    if external.shape != (batch_size, num_queries, num_keys):
        raise ValueError(
            f"external must have shape [B, Tq, Tk] = [{batch_size}, {num_queries}, "
            f"{num_keys}], got {tuple(external.shape)}"
        )


def check_query_offset(query_offset, num_queries: int, num_keys: int) -> None:
    if isinstance(query_offset, bool) or not isinstance(query_offset, int):
        raise ValueError(f"query_offset must be an int, got {query_offset!r}")
    if query_offset < 0 or query_offset + num_queries > num_keys:
        raise ValueError(
            f"query_offset must satisfy 0 <= query_offset <= Tk - Tq = "
            f"{num_keys - num_queries}, got {query_offset}"
        )


def sum_is_finite(tensor: Tensor) -> bool:
    """One reduction: a finite sum proves every entry finite (NaN and inf propagate
    through a sum; float16 sums in float32 so that it does not overflow)."""
    dtype = torch.float32 if tensor.dtype == torch.float16 else None
    return bool(torch.isfinite(tensor.detach().sum(dtype=dtype)))


def check_finite(name: str, tensor: Tensor, where: Tensor | None = None,
                 positions: str = "causal, non-padding positions") -> None:
    """Raise if ``tensor`` holds NaN or +-inf where the bool mask ``where`` (broadcast to
    ``tensor``; ``None``: everywhere) is set.

    Fast path: a finite ``tensor.sum()`` proves every entry finite, one reduction without a
    ``[numel]`` bool buffer (~10x cheaper than ``isfinite(tensor).all()`` on CPU). Only a
    non-finite sum reads the entries and ``where``."""
    if sum_is_finite(tensor):
        return
    bad = ~torch.isfinite(tensor)
    if where is not None:
        bad = bad & where
    if bool(bad.any()):
        index = bad.nonzero()[0].tolist()
        value = tensor[tuple(index)].item()
        raise ValueError(
            f"{name} must be finite at {positions}, got {value} at {name}{index}"
        )


def check_chunk_size(chunk_size) -> None:
    check_positive_int("chunk_size", chunk_size)
