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

import torch
from torch import Tensor

from pyg_transformer.graph.attention_graph import AttentionGraph, DecodeRow
from pyg_transformer.graph.scoring import (
    causal_valid_mask,
    keep_edges,
    map_score_chunks,
    masked_softmax,
    reduce_heads,
    rows_to_edges,
    sharpen,
    zero_dropped,
)
from pyg_transformer.graph.validation import (
    check_chunk_size,
    check_external,
    check_finite,
    check_graph_options,
    check_padding_mask,
    check_query_key,
    check_query_offset,
    check_scaling,
    check_scores_input,
    check_visible,
    sum_is_finite,
)

DEFAULT_CHUNK_SIZE = 256


def _sparsify_rows(reduced: Tensor, valid: Tensor | None, query_positions: Tensor,
                   seq_len: int, options: dict, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Edges of a block of head-reduced rows ``reduced [B, rows, K]``: sharpen, threshold,
    top-k, then COO (``inplace``: ``reduced`` may be overwritten)."""
    values = sharpen(reduced, options["clamp"], options["sharpen_alpha"],
                     options["sharpen_tau"], inplace=inplace)
    keep = keep_edges(values, valid, options["threshold"], options["top_k"])
    return rows_to_edges(values, keep, query_positions, seq_len)


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
    check_scores_input("attn", attn, (3, 4), "[B, H, Tq, Tk] or [B, Tq, Tk]")
    options = dict(clamp=clamp, sharpen_alpha=sharpen_alpha, sharpen_tau=sharpen_tau,
                   threshold=threshold, top_k=top_k)
    check_graph_options(head_reduction=head_reduction, **options)
    batch_size, num_queries, num_keys = attn.size(0), attn.size(-2), attn.size(-1)
    check_query_offset(query_offset, num_queries, num_keys)
    mask = check_padding_mask(attention_mask, batch_size, num_keys)
    check_external(external, batch_size, num_queries, num_keys)
    positions = torch.arange(query_offset, query_offset + num_queries, device=attn.device)
    valid = causal_valid_mask(batch_size, positions, num_keys, mask)
    check_finite("attn", attn, valid[:, None] if attn.dim() == 4 else valid)
    if external is not None:
        check_finite("external", external, valid)
    if detach:
        attn = attn.detach()
        external = None if external is None else external.detach()
    reduced = reduce_heads(attn, head_reduction) if attn.dim() == 4 else attn
    if external is not None:
        reduced = reduced + external.to(reduced.dtype)
    edge_index, edge_weight = _sparsify_rows(reduced, valid, positions, num_keys, options)
    return AttentionGraph.from_coo(edge_index, edge_weight, batch_size=batch_size,
                                   seq_len=num_keys, query_offset=query_offset)


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
    check_query_key(query, key)
    batch_size, _, num_queries, _ = query.shape
    num_keys = key.size(2)
    check_scaling(scaling)
    check_chunk_size(chunk_size)
    options = dict(clamp=clamp, sharpen_alpha=sharpen_alpha, sharpen_tau=sharpen_tau,
                   threshold=threshold, top_k=top_k)
    check_graph_options(head_reduction=head_reduction, **options)
    check_query_offset(query_offset, num_queries, num_keys)
    mask = check_padding_mask(attention_mask, batch_size, num_keys)
    check_external(external, batch_size, num_queries, num_keys)
    check_visible(visible, batch_size, num_queries, num_keys)
    # NaN/inf only matter where a real token reads or is read (every key is causally
    # visible to the last query row); one sum per tensor when all is finite
    real = None if mask is None else mask[:, None, :, None]
    check_finite("key", key, real, positions="non-padding positions")
    check_finite("query", query, None if real is None else
                 real[:, :, query_offset : query_offset + num_queries],
                 positions="non-padding positions")
    if external is not None and not sum_is_finite(external):
        rows = torch.arange(query_offset, query_offset + num_queries, device=query.device)
        check_finite("external", external, causal_valid_mask(batch_size, rows, num_keys, mask))
    if num_queries == 0:  # no query row, no edge
        return AttentionGraph.from_coo(
            torch.empty(2, 0, dtype=torch.long, device=query.device), query.new_empty(0),
            batch_size=batch_size, seq_len=num_keys, query_offset=query_offset)
    if detach and external is not None:
        external = external.detach()

    def chunk_edges(scores: Tensor, valid: Tensor | None, start: int):
        rows = scores.size(2)
        probs = masked_softmax(scores, valid, query.dtype)
        reduced = reduce_heads(probs, head_reduction)
        if external is not None:
            block = external[:, start : start + rows, : scores.size(-1)]
            reduced = reduced + block.to(reduced.dtype)
        first = query_offset + start
        positions = torch.arange(first, first + rows, device=query.device)
        return _sparsify_rows(reduced, valid, positions, num_keys, options,
                              inplace=not torch.is_grad_enabled())

    differentiable = not detach and torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad
        or (external is not None and external.requires_grad))
    with torch.set_grad_enabled(differentiable):
        parts = map_score_chunks(
            chunk_edges, query, key, scaling=scaling, padding=mask, visible=visible,
            query_offset=query_offset, chunk_size=chunk_size, checkpointed=differentiable)
    edge_index = torch.cat([edges for edges, _ in parts], dim=1)
    edge_weight = torch.cat([weights for _, weights in parts])
    if len(parts) > 1:  # chunk-major -> the (batch, query, key) order of one pass
        order = torch.argsort(edge_index[1] * num_keys + edge_index[0] % num_keys)
        edge_index, edge_weight = edge_index[:, order], edge_weight[order]
    return AttentionGraph.from_coo(edge_index, edge_weight, batch_size=batch_size,
                                   seq_len=num_keys, query_offset=query_offset)


def decode_row_graph(query: Tensor, key: Tensor, *, scaling: float,
                     padding: Tensor | None, head_reduction: str, clamp: float | None,
                     sharpen_alpha: float | None, sharpen_tau: float, threshold: float,
                     top_k: int | None) -> AttentionGraph | DecodeRow:
    """:func:`qk_to_graph` of a single query row at the last position (a KV-cache decode
    step) without argument checks or gradients: the same scorer and chain. Without
    ``top_k`` the row stays dense (a :class:`DecodeRow`, no edge list).

    Args:
        query: ``[B, H, 1, d]``; ``key`` ``[B, Hkv, Tk, d]``.
        padding: ``[B, Tk]`` bool keys the row may see (``None``: all).
    """
    batch_size, num_keys = query.size(0), key.size(2)
    options = dict(clamp=clamp, sharpen_alpha=sharpen_alpha, sharpen_tau=sharpen_tau,
                   threshold=threshold, top_k=top_k)
    with torch.no_grad():

        def row(scores: Tensor, valid: Tensor | None, _start: int):
            reduced = reduce_heads(masked_softmax(scores, valid, query.dtype), head_reduction)
            if top_k is not None:
                position = torch.full((1,), num_keys - 1, device=query.device)
                return _sparsify_rows(reduced, valid, position, num_keys, options, inplace=True)
            values = sharpen(reduced, clamp, sharpen_alpha, sharpen_tau, inplace=True)
            return DecodeRow(zero_dropped(values, valid, threshold)[:, 0])

        (result,) = map_score_chunks(row, query, key, scaling=scaling, padding=padding,
                                     query_offset=num_keys - 1, chunk_size=1)
    if isinstance(result, DecodeRow):
        return result
    return AttentionGraph.from_coo(*result, batch_size=batch_size, seq_len=num_keys,
                                   query_offset=num_keys - 1)
