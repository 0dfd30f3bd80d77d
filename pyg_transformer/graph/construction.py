r"""Attention probabilities (or queries and keys) to a batched causal PyG graph.

For one sequence the adjacency of a layer is built in four steps (head reduction, clamp,
sigmoid sharpening, threshold and top-k; the Sparse-GIN pipeline of Buehler 2025, §2.3):

.. math::
    A_{agg} = \min\bigl(c, \operatorname{reduce}_h A_h\bigr), \qquad
    A' = \sigma\bigl(\alpha (A_{agg} - \tau)\bigr), \qquad
    \mathcal{E} = \{(j \to i) : j \le i,\ A'_{ij} > \varepsilon\}

optionally restricted to the ``k`` largest :math:`A'_{ij}` of each row ``i``. Padding
positions neither send nor receive edges.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pyg_transformer.graph.attention_graph import AttentionGraph
from pyg_transformer.options import HEAD_REDUCTIONS

DEFAULT_CHUNK_SIZE = 256


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_positive_finite(value) -> bool:
    return _is_number(value) and 0 < value < math.inf


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
    if clamp is not None and not _is_positive_finite(clamp):
        raise ValueError(
            f"clamp must be a positive finite number or None (no clamp), got {clamp!r}"
        )
    if sharpen_alpha is not None and not _is_positive_finite(sharpen_alpha):
        raise ValueError(
            f"sharpen_alpha must be a positive finite number or None, got {sharpen_alpha!r}"
        )
    if not _is_number(sharpen_tau) or not math.isfinite(sharpen_tau):
        raise ValueError(f"sharpen_tau must be a finite number, got {sharpen_tau!r}")
    if not _is_number(threshold) or not 0 <= threshold < math.inf:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if sharpen_alpha is not None and not threshold < 1:
        raise ValueError(
            f"threshold must lie in [0, 1) after sigmoid sharpening, got {threshold!r}"
        )
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
    ):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")


def _check_attention_mask(attention_mask: Tensor | None, batch_size: int, seq_len: int):
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask must be a tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != (batch_size, seq_len):
        raise ValueError(
            f"attention_mask must have shape [B, Tk] = [{batch_size}, {seq_len}], "
            f"got {tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()


def _check_external(external: Tensor | None, batch_size: int, num_queries: int,
                    num_keys: int) -> None:
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


def _sum_is_finite(tensor: Tensor) -> bool:
    dtype = torch.float32 if tensor.dtype == torch.float16 else None
    return bool(torch.isfinite(tensor.detach().sum(dtype=dtype)))


def _check_finite(name: str, tensor: Tensor, where: Tensor | None = None,
                  positions: str = "causal, non-padding positions") -> None:
    """Raise if ``tensor`` holds NaN or +-inf where the bool mask ``where`` (broadcast to
    ``tensor``; ``None``: everywhere) is set.

    Fast path: a finite ``tensor.sum()`` proves every entry finite (NaN and inf propagate
    through a sum), one reduction without a ``[numel]`` bool buffer (~10x cheaper than
    ``isfinite(tensor).all()`` on CPU). Only a non-finite sum (or an overflowing one: float16
    sums in float32) reads the entries and ``where``."""
    if _sum_is_finite(tensor):
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


def _check_query_offset(query_offset: int, num_queries: int, num_keys: int) -> None:
    if isinstance(query_offset, bool) or not isinstance(query_offset, int):
        raise ValueError(f"query_offset must be an int, got {query_offset!r}")
    if query_offset < 0 or query_offset + num_queries > num_keys:
        raise ValueError(
            f"query_offset must satisfy 0 <= query_offset <= Tk - Tq = "
            f"{num_keys - num_queries}, got {query_offset}"
        )


def causal_valid_mask(
    batch_size: int,
    query_positions: Tensor,
    num_keys: int,
    attention_mask: Tensor | None,
) -> Tensor:
    """``[B, Tq, Tk]`` bool: key ``j`` may send to query position ``p`` (``j <= p``,
    both real tokens)."""
    keys = torch.arange(num_keys, device=query_positions.device)
    valid = keys.view(1, 1, -1) <= query_positions.view(1, -1, 1)
    valid = valid.expand(batch_size, -1, -1)
    if attention_mask is not None:
        query_real = attention_mask[:, query_positions]
        valid = valid & attention_mask[:, None, :] & query_real[:, :, None]
    return valid


def _reduce_heads(attn: Tensor, head_reduction: str) -> Tensor:
    if head_reduction == "sum":
        return attn.sum(dim=1)
    if head_reduction == "mean":
        return attn.mean(dim=1)
    return attn.amax(dim=1)


def _top_k_rows(values: Tensor, keep: Tensor, k: int) -> Tensor:
    """Restrict ``keep`` to the ``k`` largest kept values of each row; ties at the k-th
    value go to the most recent keys, so every chunking selects the same edges."""
    candidates = values.masked_fill(~keep, float("-inf"))
    kth = candidates.topk(k, dim=-1).values[..., -1:]
    above = keep & (candidates > kth)
    at_kth = keep & (candidates == kth)
    slots = k - above.sum(-1, keepdim=True)
    rank_from_right = at_kth.flip(-1).cumsum(-1).flip(-1)
    return above | (at_kth & (rank_from_right <= slots))


def _sparsify_rows(
    reduced: Tensor,
    valid: Tensor,
    query_positions: Tensor,
    seq_len: int,
    *,
    clamp: float | None,
    sharpen_alpha: float | None,
    sharpen_tau: float,
    threshold: float,
    top_k: int | None,
) -> tuple[Tensor, Tensor]:
    """Edges of a block of query rows: ``reduced``/``valid`` are ``[B, Tq, K]`` over the
    first ``K <= seq_len`` keys; node ids are ``b * seq_len + position``."""
    values = reduced
    if clamp is not None:
        values = values.clamp(max=clamp)
    if sharpen_alpha is not None:
        values = torch.sigmoid(sharpen_alpha * (values - sharpen_tau))
    keep = valid & (values > threshold)
    if top_k is not None and top_k < values.size(-1):
        keep = _top_k_rows(values, keep, top_k)
    b, i, j = keep.nonzero(as_tuple=True)
    target = b * seq_len + query_positions[i]
    source = b * seq_len + j
    return torch.stack([source, target]), values[b, i, j]


def _make_graph(
    edge_index: Tensor, edge_weight: Tensor, batch_size: int, num_keys: int, offset: int
) -> AttentionGraph:
    device = edge_index.device
    return AttentionGraph(
        edge_index=edge_index,
        edge_weight=edge_weight,
        batch=torch.arange(batch_size, device=device).repeat_interleave(num_keys),
        num_nodes=batch_size * num_keys,
        batch_size=batch_size,
        seq_len=num_keys,
        query_offset=offset,
    )


def attention_to_graph(
    attn: Tensor,
    attention_mask: Tensor | None = None,
    *,
    head_reduction: str = "sum",
    clamp: float | None = 1.0,
    sharpen_alpha: float | None = None,
    sharpen_tau: float = 0.0,
    threshold: float = 0.0,
    top_k: int | None = None,
    query_offset: int = 0,
    detach: bool = True,
    external: Tensor | None = None,
) -> AttentionGraph:
    r"""Build the causal attention graph from attention probabilities.

    .. math::
        A'_{ij} = \sigma\Bigl(\alpha\bigl(\min(c, \operatorname{reduce}_h A_{h,ij})
        - \tau\bigr)\Bigr), \qquad (j \to i) \in \mathcal{E}
        \iff j \le i \wedge A'_{ij} > \text{threshold}

    Args:
        attn: probabilities ``[B, H, Tq, Tk]`` or already head-reduced ``[B, Tq, Tk]``.
        attention_mask: ``[B, Tk]``, 1 for real tokens, 0 for padding (left or right).
            Padding positions get no incoming and no outgoing edge.
        head_reduction: ``"sum"``, ``"mean"`` or ``"max"`` over heads.
        clamp: upper clamp :math:`c` after the head reduction (``None``: no clamp).
        sharpen_alpha: :math:`\alpha` of the sigmoid sharpening (``None``: no sharpening).
        sharpen_tau: :math:`\tau` of the sigmoid sharpening.
        threshold: keep edges whose weight is strictly greater (in ``[0, 1)`` after
            sharpening).
        top_k: keep at most the ``k`` largest kept weights per query row; ties go to the
            most recent key.
        query_offset: absolute position of the first query row (``Tk - Tq`` when
            decoding with a KV cache).
        detach: if ``True`` the edge weights carry no gradient; if ``False`` gradients
            flow from ``edge_weight`` back to ``attn`` (the edge *set* is never
            differentiable).
        external: optional external adjacency ``[B, Tq, Tk]`` (``external[b, i, j]``
            weighs ``j -> query row i``), added to the head-reduced probabilities before
            clamping and sharpening,
            :math:`A' = \sigma(\alpha(\min(c, \operatorname{reduce}_h A_h + E) - \tau))`;
            causality and padding still apply.

    Returns:
        An :class:`AttentionGraph` with ``B * Tk`` nodes (no edges when ``Tq = 0``).

    Raises:
        TypeError: ``attn`` or ``external`` is not a floating point tensor.
        ValueError: a bad shape or option, or NaN/inf in ``attn`` or ``external`` at a
            causal, non-padding position (other entries are never read).
    """
    if not isinstance(attn, Tensor):
        raise TypeError(f"attn must be a tensor, got {type(attn).__name__}")
    if attn.dim() not in (3, 4):
        raise ValueError(
            f"attn must have shape [B, H, Tq, Tk] or [B, Tq, Tk], got {tuple(attn.shape)}"
        )
    if not attn.is_floating_point():
        raise TypeError(f"attn must be a floating point tensor, got {attn.dtype}")
    check_graph_options(
        head_reduction=head_reduction,
        clamp=clamp,
        sharpen_alpha=sharpen_alpha,
        sharpen_tau=sharpen_tau,
        threshold=threshold,
        top_k=top_k,
    )
    batch_size, num_queries, num_keys = attn.size(0), attn.size(-2), attn.size(-1)
    _check_query_offset(query_offset, num_queries, num_keys)
    mask = _check_attention_mask(attention_mask, batch_size, num_keys)
    _check_external(external, batch_size, num_queries, num_keys)
    positions = torch.arange(query_offset, query_offset + num_queries, device=attn.device)
    valid = causal_valid_mask(batch_size, positions, num_keys, mask)
    _check_finite("attn", attn, valid[:, None] if attn.dim() == 4 else valid)
    if external is not None:
        _check_finite("external", external, valid)
    if detach:
        attn = attn.detach()
        external = None if external is None else external.detach()
    reduced = _reduce_heads(attn, head_reduction) if attn.dim() == 4 else attn
    if external is not None:
        reduced = reduced + external.to(reduced.dtype)
    edge_index, edge_weight = _sparsify_rows(
        reduced,
        valid,
        positions,
        num_keys,
        clamp=clamp,
        sharpen_alpha=sharpen_alpha,
        sharpen_tau=sharpen_tau,
        threshold=threshold,
        top_k=top_k,
    )
    return _make_graph(edge_index, edge_weight, batch_size, num_keys, query_offset)


def qk_to_graph(
    query: Tensor,
    key: Tensor,
    *,
    scaling: float,
    attention_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    head_reduction: str = "sum",
    clamp: float | None = 1.0,
    sharpen_alpha: float | None = None,
    sharpen_tau: float = 0.0,
    threshold: float = 0.0,
    top_k: int | None = None,
    query_offset: int = 0,
    detach: bool = True,
    external: Tensor | None = None,
    visible: Tensor | None = None,
) -> AttentionGraph:
    r"""Build the same graph as :func:`attention_to_graph` straight from queries and keys.

    The probabilities :math:`A_h = \operatorname{softmax}(s\, Q_h K_h^\top + M)` (causal
    and padding mask :math:`M`) are computed ``chunk_size`` query rows at a time, each
    chunk against only the keys it can see causally, so at most
    ``B * H * chunk_size * Tk`` scores exist at once; only kept edges are stored.
    Equal to ``attention_to_graph(softmax(...), ...)`` on the eager probabilities.

    Args:
        query: post-RoPE queries ``[B, H, Tq, d]``.
        key: post-RoPE keys ``[B, Hkv, Tk, d]``; ``H`` must be a multiple of ``Hkv``
            (grouped-query attention: query head ``h`` reads key head ``h // (H/Hkv)``).
        scaling: score scale :math:`s` (usually ``d ** -0.5``).
        attention_mask: ``[B, Tk]``, 1 for real tokens.
        chunk_size: number of query rows scored at once.
        detach: if ``False`` the edge weights are differentiable w.r.t. ``query`` and
            ``key``; each chunk is recomputed in the backward pass (activation
            checkpointing) so memory stays ``O(B * H * chunk_size * Tk)``.
        head_reduction: as in :func:`attention_to_graph`; so are ``clamp``,
            ``sharpen_alpha``, ``sharpen_tau``, ``threshold``, ``top_k``,
            ``query_offset`` and ``external``.
        visible: optional boolean ``[B, Tq, Tk]``: the keys each query row may see
            beyond the causal and padding rules (e.g. the model's own sliding-window
            mask); edges and probabilities are restricted to them.

    Returns:
        An :class:`AttentionGraph` with ``B * Tk`` nodes (no edges when ``Tq = 0``).

    Raises:
        TypeError: ``query`` or ``key`` is not a floating point tensor, their dtypes
            differ, or ``external`` is not floating point.
        ValueError: a bad shape or option, ``scaling`` not a positive finite number,
            NaN/inf in ``query`` or ``key`` at a non-padding token, or in ``external``
            at a causal, non-padding position.
    """
    for name, tensor in (("query", query), ("key", key)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(
                f"{name} must have shape [B, heads, T, d], got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {tensor.dtype}")
    if query.dtype != key.dtype:
        raise TypeError(
            f"query and key must have the same dtype, got query.dtype={query.dtype} and "
            f"key.dtype={key.dtype}"
        )
    batch_size, num_heads, num_queries, head_dim = query.shape
    if key.size(0) != batch_size or key.size(-1) != head_dim:
        raise ValueError(
            f"key must have shape [B={batch_size}, Hkv, Tk, d={head_dim}], "
            f"got {tuple(key.shape)}"
        )
    num_kv_heads, num_keys = key.size(1), key.size(2)
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"the number of query heads ({num_heads}) must be a multiple of the number "
            f"of key heads ({num_kv_heads})"
        )
    if not _is_positive_finite(scaling):
        raise ValueError(f"scaling must be a positive finite number, got {scaling!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    check_graph_options(
        head_reduction=head_reduction,
        clamp=clamp,
        sharpen_alpha=sharpen_alpha,
        sharpen_tau=sharpen_tau,
        threshold=threshold,
        top_k=top_k,
    )
    _check_query_offset(query_offset, num_queries, num_keys)
    mask = _check_attention_mask(attention_mask, batch_size, num_keys)
    _check_external(external, batch_size, num_queries, num_keys)
    if visible is not None and (not isinstance(visible, Tensor) or visible.dtype != torch.bool
                                or visible.shape != (batch_size, num_queries, num_keys)):
        raise ValueError(
            f"visible must be a bool tensor of shape [B, Tq, Tk] = [{batch_size}, "
            f"{num_queries}, {num_keys}], got {getattr(visible, 'dtype', type(visible))} "
            f"{tuple(getattr(visible, 'shape', ()))}"
        )
    # NaN/inf only matter where a real token reads or is read (every key is causally
    # visible to the last query row); one sum per tensor when all is finite
    real = None if mask is None else mask[:, None, :, None]
    _check_finite("key", key, real, positions="non-padding positions")
    _check_finite("query", query, None if real is None else
                  real[:, :, query_offset : query_offset + num_queries],
                  positions="non-padding positions")
    if external is not None and not _sum_is_finite(external):
        rows = torch.arange(query_offset, query_offset + num_queries, device=query.device)
        _check_finite("external", external, causal_valid_mask(batch_size, rows, num_keys, mask))
    options = dict(
        clamp=clamp,
        sharpen_alpha=sharpen_alpha,
        sharpen_tau=sharpen_tau,
        threshold=threshold,
        top_k=top_k,
    )
    groups = num_heads // num_kv_heads
    # [B, Hkv, 1, d, Tk]: broadcast over the query heads of each group (no repeat_kv copy)
    key_t = key.unsqueeze(2).transpose(-1, -2)
    visible_keys = visible

    def chunk_edges(query_chunk: Tensor, key_t: Tensor, start: int) -> tuple[Tensor, Tensor]:
        rows = query_chunk.size(2)
        visible = query_offset + start + rows  # later keys have probability exactly 0
        positions = torch.arange(visible - rows, visible, device=query.device)
        valid = causal_valid_mask(
            batch_size, positions, visible, None if mask is None else mask[:, :visible]
        )
        if visible_keys is not None:
            valid = valid & visible_keys[:, start : start + rows, :visible]
        grouped = query_chunk.view(batch_size, num_kv_heads, groups, rows, head_dim)
        scores = torch.matmul(grouped, key_t[..., :visible])
        scores = scores.view(batch_size, num_heads, rows, visible)
        fill = torch.finfo(torch.float32).min
        if torch.is_grad_enabled():
            scores = scores.float() * scaling
            probs = scores.masked_fill(~valid[:, None], fill).softmax(dim=-1)
        else:  # in place: one [B, H, chunk, Tk] buffer per chunk
            probs = scores.float().mul_(scaling).masked_fill_(~valid[:, None], fill)
            probs = probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()
            probs = probs.div_(probs.sum(dim=-1, keepdim=True))
        probs = probs.to(query.dtype)
        reduced = _reduce_heads(probs, head_reduction)
        if external is not None:
            block = external[:, start : start + rows, :visible]
            reduced = reduced + (block.detach() if detach else block).to(reduced.dtype)
        return _sparsify_rows(reduced, valid, positions, num_keys, **options)

    edge_indices, edge_weights = [], []
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        for start in range(0, num_queries, chunk_size):
            query_chunk = query[:, :, start : start + chunk_size]
            differentiable = query.requires_grad or key.requires_grad or (
                external is not None and external.requires_grad)
            if detach or not differentiable:
                edge_index, edge_weight = chunk_edges(query_chunk, key_t, start)
            else:
                edge_index, edge_weight = checkpoint(
                    chunk_edges, query_chunk, key_t, start, use_reentrant=False
                )
            edge_indices.append(edge_index)
            edge_weights.append(edge_weight)
    if not edge_indices:  # Tq = 0: no query row, no edge
        edge_indices.append(torch.empty(2, 0, dtype=torch.long, device=query.device))
        edge_weights.append(query.new_empty(0))
    edge_index = torch.cat(edge_indices, dim=1)
    edge_weight = torch.cat(edge_weights)
    if len(edge_indices) > 1:  # chunk-major -> the (batch, query, key) order of one pass
        order = torch.argsort(edge_index[1] * num_keys + edge_index[0] % num_keys)
        edge_index, edge_weight = edge_index[:, order], edge_weight[order]
    return _make_graph(edge_index, edge_weight, batch_size, num_keys, query_offset)
