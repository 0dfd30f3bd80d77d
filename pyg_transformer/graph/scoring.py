r"""The graph core: one chunked, causal, grouped-query scorer and the adjacency chain.

Every graph of the library starts from the scores of a block of query rows,

.. math::
    S_{h,ij} = s\, Q_{h,i} \cdot K_{g(h),j}, \qquad g(h) = \lfloor h / (H / H_{kv}) \rfloor,

over the keys ``j`` that query position ``p_i`` may see: ``j <= p_i`` (causal), both real
tokens (padding) and, optionally, an extra visibility such as a sliding window.
:func:`map_score_chunks` evaluates them ``chunk_size`` rows at a time, against only the
first ``p_last + 1`` keys (later keys are causally invisible), with activation
checkpointing when gradients are needed, so at most ``B * H * chunk_size * Tk`` scores
exist at once. The Sparse-GIN adjacency is then

.. math::
    A' = \sigma\bigl(\alpha (\min(c, \operatorname{reduce}_h \operatorname{softmax}(S))
    - \tau)\bigr), \qquad \mathcal{E} = \{(j \to i): A'_{ij} > \varepsilon\}
    \ \text{(optionally the } k \text{ largest per row)},

built from :func:`masked_softmax`, :func:`reduce_heads`, :func:`sharpen` and
:func:`keep_edges`. GIN-/PNA-Attention apply their own activation to the same scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: the fill value of masked scores (finite, so that a fully masked row gives no NaN)
MASKED_SCORE = torch.finfo(torch.float32).min


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


def grouped_scores(query: Tensor, key: Tensor, scale: float | Tensor | None = None) -> Tensor:
    """``[B, H, rows, K]`` dot products ``scale * Q K^T`` of ``query [B, H, rows, d]`` with
    grouped-query ``key [B, Hkv, K, d]`` (query head ``h`` reads key head
    ``h // (H / Hkv)``): one batched product per ``(b, key head)`` over its group of query
    heads, without repeating the keys; a number ``scale`` is fused into the product."""
    batch, heads, rows, d = query.shape
    kv_heads, num_keys = key.size(1), key.size(2)
    grouped = query.reshape(batch * kv_heads, heads // kv_heads * rows, d)
    keys_t = key.reshape(batch * kv_heads, num_keys, d).transpose(1, 2)
    if isinstance(scale, (int, float)):
        # beta=0: the (empty) input is ignored
        scores = torch.baddbmm(grouped.new_empty(()), grouped, keys_t, beta=0.0, alpha=scale)
    else:
        scores = torch.bmm(grouped, keys_t)
        if scale is not None:
            scores = scores * scale
    return scores.view(batch, heads, rows, num_keys)


def masked_softmax(scores: Tensor, valid: Tensor | None, dtype: torch.dtype) -> Tensor:
    r""":math:`\operatorname{softmax}_j` of float32 ``scores [B, H, rows, K]`` over the
    ``valid [B, rows, K]`` keys (``None``: all), cast to ``dtype``. Without autograd the
    mask is applied to ``scores`` in place."""
    if valid is not None:
        fill = ~valid[:, None]
        scores = (scores.masked_fill_(fill, MASKED_SCORE) if not torch.is_grad_enabled()
                  else scores.masked_fill(fill, MASKED_SCORE))
    probs = scores.softmax(dim=-1)
    return probs if probs.dtype == dtype else probs.to(dtype)


def reduce_heads(attn: Tensor, head_reduction: str) -> Tensor:
    """``[B, H, ...]`` -> ``[B, ...]``: the ``"sum"``, ``"mean"`` or ``"max"`` over heads."""
    if head_reduction == "sum":
        return attn.sum(dim=1)
    if head_reduction == "mean":
        return attn.mean(dim=1)
    return attn.amax(dim=1)


def sharpen(values: Tensor, clamp: float | None, alpha: float | None, tau: float,
            inplace: bool = False) -> Tensor:
    r""":math:`\sigma(\alpha(\min(c, A) - \tau))` (each step skipped when its option is
    ``None``); ``inplace`` overwrites ``values``."""
    if inplace:
        if clamp is not None:
            values = values.clamp_(max=clamp)
        return values if alpha is None else values.sub_(tau).mul_(alpha).sigmoid_()
    if clamp is not None:
        values = values.clamp(max=clamp)
    if alpha is not None:
        values = torch.sigmoid(alpha * (values - tau))
    return values


def top_k_rows(values: Tensor, keep: Tensor, k: int) -> Tensor:
    """Restrict ``keep`` to the ``k`` largest kept values of each row; ties at the k-th
    value go to the most recent keys, so every chunking selects the same edges."""
    candidates = values.masked_fill(~keep, float("-inf"))
    kth = candidates.topk(k, dim=-1).values[..., -1:]
    above = keep & (candidates > kth)
    at_kth = keep & (candidates == kth)
    slots = k - above.sum(-1, keepdim=True)
    rank_from_right = at_kth.flip(-1).cumsum(-1).flip(-1)
    return above | (at_kth & (rank_from_right <= slots))


def keep_edges(values: Tensor, valid: Tensor | None, threshold: float,
               top_k: int | None) -> Tensor:
    """The edge set of a block of rows: ``valid`` entries above ``threshold``, at most
    the ``top_k`` largest per row."""
    keep = values > threshold
    if valid is not None:
        keep = keep & valid
    if top_k is not None and top_k < values.size(-1):
        keep = top_k_rows(values, keep, top_k)
    return keep


def zero_dropped(values: Tensor, valid: Tensor | None, threshold: float) -> Tensor:
    """``values`` with every entry that is no edge (not ``valid`` or ``<= threshold``)
    set to 0, in place: the dense form of :func:`keep_edges` without ``top_k``."""
    values = torch.threshold_(values, threshold, 0.0)
    return values if valid is None else values.masked_fill_(~valid, 0.0)


def rows_to_edges(values: Tensor, keep: Tensor, query_positions: Tensor,
                  seq_len: int) -> tuple[Tensor, Tensor]:
    """COO edges of a block of rows ``values``/``keep`` ``[B, rows, K]``: node ids
    ``b * seq_len + position``, ``edge_index[0]`` the key (source), in
    ``(batch, row, key)`` order."""
    b, i, j = keep.nonzero(as_tuple=True)
    target = b * seq_len + query_positions[i]
    source = b * seq_len + j
    return torch.stack([source, target]), values[b, i, j]


def map_score_chunks(
    fn: Callable[..., object],
    query: Tensor,
    key: Tensor,
    *,
    scaling: float | None,
    padding: Tensor | None = None,
    visible: Tensor | None = None,
    query_offset: int = 0,
    chunk_size: int,
    checkpointed: bool = False,
    upcast: bool = True,
    causal_keys: bool = True,
) -> list:
    r"""Apply ``fn(scores, valid, start)`` to the scores of each block of ``chunk_size``
    query rows and return the results in order.

    ``scores`` ``[B, H, rows, K]`` are :math:`s\,QK^\top` of rows ``start ..
    start + rows - 1`` (absolute positions from ``query_offset + start``) against the
    first ``K = query_offset + start + rows`` keys (the later keys are causally
    invisible to the block; ``causal_keys=False``: all ``Tk`` keys); float32 when
    ``upcast``, else in the query's dtype.
    ``valid`` ``[B, rows, K]`` is the bool mask of causal, non-padding, ``visible``
    pairs, or ``None`` when every pair of the block is valid (no padding, no
    ``visible``, a single row).

    Args:
        query: ``[B, H, Tq, d]`` post-RoPE queries.
        key: ``[B, Hkv, Tk, d]`` post-RoPE keys.
        scaling: score scale :math:`s` (``None``: ``query`` is already scaled).
        padding: ``[B, Tk]`` bool, ``True`` for real tokens.
        visible: ``[B, Tq, Tk]`` bool, extra visibility of each query row.
        query_offset: absolute position of the first query row.
        chunk_size: rows per block.
        checkpointed: recompute each block in the backward pass (activation
            checkpointing) instead of keeping its scores; only ``fn``'s outputs are
            stored.
        upcast: compute the scores in float32.
        causal_keys: score only the keys a block can see causally.
    """
    batch, num_queries, num_keys = query.size(0), query.size(2), key.size(2)
    out = []

    def block(query_chunk: Tensor, key: Tensor, start: int):
        rows = query_chunk.size(2)
        last = query_offset + start + rows  # one past the block's last position
        stop = last if causal_keys else num_keys
        if rows == 1 and padding is None and visible is None and stop == last:
            valid = None
        else:
            positions = torch.arange(last - rows, last, device=query.device)
            valid = causal_valid_mask(
                batch, positions, stop, None if padding is None else padding[:, :stop]
            )
            if visible is not None:
                valid = valid & visible[:, start : start + rows, :stop]
        fused_scale = scaling if (query.dtype == torch.float32 or not upcast) else None
        scores = grouped_scores(query_chunk, key[:, :, :stop], scale=fused_scale)
        if upcast and scores.dtype != torch.float32:
            scores = scores.float()
        if scaling is not None and fused_scale is None:
            scores = scores * scaling if torch.is_grad_enabled() else scores.mul_(scaling)
        return fn(scores, valid, start)

    for start in range(0, num_queries, chunk_size):
        query_chunk = query[:, :, start : start + chunk_size]
        if checkpointed:
            out.append(checkpoint(block, query_chunk, key, start, use_reentrant=False))
        else:
            out.append(block(query_chunk, key, start))
    return out
