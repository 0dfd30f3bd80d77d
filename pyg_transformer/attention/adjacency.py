r"""Per-head adjacency of GIN-/PNA-Attention: activations, query chunks, PyG graphs.

For head ``h`` with scores :math:`S_h = \alpha Q_h K_h^\top / \sqrt{d}` the adjacency
:math:`A'_h = \operatorname{act}(S_h)` is restricted to causal, non-padding pairs
``(key j -> query i)``, ``j <= i``. Activations:

========================  ===========================================================
``softmax``               :math:`\operatorname{softmax}_j(S_{ij})`
``sigmoid``               :math:`\sigma(\beta (S_{ij} - \tau))`
``sharp_softplus``        :math:`\log(1 + e^{\beta (S_{ij} - \tau)}) / \beta`
``relu_threshold``        :math:`\max(0, \operatorname{softmax}_j(S_{ij}) - \tau)`
``top_k``                 :math:`\operatorname{softmax}_j(S_{ij})` on the ``k`` largest
                          entries of row ``i``, 0 elsewhere (gradients flow through the
                          kept values)
========================  ===========================================================

Scores are only ever materialised ``chunk`` query rows at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_transformer.graph import AttentionGraph, scoring
from pyg_transformer.graph.scoring import causal_valid_mask
from pyg_transformer.options import ADJACENCY_ACTIVATIONS

__all__ = [
    "ADJACENCY_ACTIVATIONS",
    "SPARSE_ACTIVATIONS",
    "AdjacencySpec",
    "adjacency_block",
    "chunk_rows",
    "head_graphs",
    "map_query_chunks",
    "map_score_chunks",
    "padding_safe_mask",
    "scaled_softmax_aggregate",
    "score_scale",
    "sparse_head_edges",
]

#: activations whose adjacency has exact zeros (a sparse graph): ``graph_backend="auto"``
#: runs them on the PyG backend.
SPARSE_ACTIVATIONS = ("relu_threshold", "top_k")
#: activations that read ``tau``.
TAU_ACTIVATIONS = ("sigmoid", "sharp_softplus", "relu_threshold")

#: elements of one ``[B, H, chunk, Tk]`` score block (bounds the chunk size)
BLOCK_ELEMENTS = 1 << 22


class AdjacencySpec:
    r"""The activation of an adjacency and its hyper-parameters.

    Args:
        activation: one of :data:`ADJACENCY_ACTIVATIONS`.
        beta: :math:`\beta` (``sigmoid``, ``sharp_softplus``).
        tau: :math:`\tau`, a float or a (trainable) 0-dim tensor.
        top_k: ``k`` (int) or a fraction of the row length (float in ``(0, 1]``).
    """

    def __init__(
        self,
        activation: str = "softmax",
        *,
        beta: float = 1.0,
        tau: float | Tensor = 0.0,
        top_k: int | float | None = None,
    ):
        if activation not in ADJACENCY_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ADJACENCY_ACTIVATIONS}, got {activation!r}"
            )
        if activation == "top_k" and top_k is None:
            raise ValueError("activation='top_k' needs top_k")
        self.activation = activation
        self.beta = beta
        self.tau = tau
        self.top_k = top_k

    @property
    def is_sparse(self) -> bool:
        return self.activation in SPARSE_ACTIVATIONS

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.activation!r}, beta={self.beta}, "
            f"tau={float(self.tau):g}, top_k={self.top_k})"
        )


def _row_k(spec: AdjacencySpec, valid: Tensor) -> Tensor:
    """``[..., rows, 1]`` number of keys kept per row for ``top_k``."""
    if isinstance(spec.top_k, int):
        return torch.full_like(valid[..., :1], spec.top_k, dtype=torch.long)
    n = valid.sum(-1, keepdim=True)
    return torch.ceil(n * spec.top_k).long().clamp(min=1)


def adjacency_block(
    scores: Tensor, valid: Tensor, spec: AdjacencySpec, external: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Activation of one block of score rows.

    Args:
        scores: ``[B, H, rows, Tk]`` :math:`S` (sharpening and :math:`1/\sqrt{d}` applied).
        valid: ``[B, 1, rows, Tk]`` bool, causal non-padding pairs.
        spec: the activation.
        external: optional ``[B, 1, rows, Tk]`` external adjacency :math:`E`, added to
            every head: :math:`A' + E` on causal non-padding pairs; its non-zero
            entries are edges too and the only entries that get gradients.

    Returns:
        ``(values, keep)``: ``values`` ``[B, H, rows, Tk]`` is :math:`A'` (exactly 0 where
        not kept), ``keep`` the bool edge set.
    """
    act = spec.activation
    if act in ("softmax", "relu_threshold", "top_k"):
        probs = torch.softmax(scores.masked_fill(~valid, torch.finfo(scores.dtype).min), -1)
        if act == "softmax":
            keep = valid.expand_as(probs)
            values = probs
            if bool(valid.any(-1).all()):
                # every row has a valid key: masked entries are exp(min - max) == 0 exactly
                return _add_external(values, keep, valid, external)
        elif act == "relu_threshold":
            shifted = probs - spec.tau
            keep = valid & (shifted > 0)
            values = F.relu(shifted)
        else:
            k_row = _row_k(spec, valid)
            k_max = min(int(k_row.max()), scores.size(-1))
            # softmax is monotone within a row: the k largest scores are the k largest
            # probabilities (the sparse path selects the same way)
            top = scores.masked_fill(~valid, -math.inf).topk(k_max, dim=-1).indices
            ranks = torch.arange(k_max, device=scores.device)
            chosen = (ranks < k_row).expand_as(top)
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, top, chosen)
            keep = keep & valid
            values = probs
    elif act == "sigmoid":
        values = torch.sigmoid(spec.beta * (scores - spec.tau))
        keep = valid.expand_as(values)
    else:  # sharp_softplus
        values = F.softplus(scores - spec.tau, beta=spec.beta)
        keep = valid.expand_as(values)
    values = values.masked_fill(~keep, 0.0)
    return _add_external(values, keep, valid, external)


def _add_external(values: Tensor, keep: Tensor, valid: Tensor,
                  external: Tensor | None) -> tuple[Tensor, Tensor]:
    if external is not None:
        # edges = non-zero entries on causal, non-padding pairs (gradients reach only those)
        external = external.to(values.dtype).masked_fill(~valid | (external == 0), 0.0)
        values = values + external
        keep = keep | (external != 0)
    return values, keep


def chunk_rows(batch: int, heads: int, num_keys: int, extra: int = 1) -> int:
    """Query rows per chunk so that one ``[B, H, rows, Tk, extra]`` block stays below
    :data:`BLOCK_ELEMENTS` elements."""
    return max(1, BLOCK_ELEMENTS // max(1, batch * heads * num_keys * extra))


def map_score_chunks(
    fn: Callable[[Tensor, Tensor, int], object],
    query: Tensor,
    key: Tensor,
    *,
    attention_mask: Tensor | None,
    query_offset: int,
    chunk: int,
    causal_keys: bool = False,
    checkpointed: bool = False,
) -> list:
    r"""Apply ``fn(scores, valid, start)`` to the raw scores of each block of ``chunk``
    query rows, through the graph core's scorer
    (:func:`pyg_transformer.graph.scoring.map_score_chunks`).

    ``scores`` is ``[B, H, rows, Tk']`` in the query's dtype (``query`` already carries
    the score scale), ``valid`` the ``[B, 1, rows, Tk']`` causal non-padding pairs and
    ``start`` the first row of the block. With ``causal_keys`` only the keys a block can
    see are scored (``Tk' = query_offset + start + rows``); otherwise ``Tk' = Tk``.
    ``checkpointed`` recomputes each block in the backward pass.
    """

    def with_valid(scores: Tensor, valid: Tensor | None, start: int):
        if valid is None:  # a single row that sees every key
            valid = scores.new_ones(scores.size(0), 1, scores.size(-1), dtype=torch.bool)
        return fn(scores, valid[:, None], start)

    return scoring.map_score_chunks(
        with_valid, query, key, scaling=None, padding=attention_mask,
        query_offset=query_offset, chunk_size=chunk, checkpointed=checkpointed,
        upcast=False, causal_keys=causal_keys,
    )


def map_query_chunks(
    fn: Callable[[Tensor, Tensor], Tensor | tuple[Tensor, ...]],
    query: Tensor,
    key: Tensor,
    spec: AdjacencySpec,
    *,
    attention_mask: Tensor | None,
    query_offset: int,
    chunk: int,
    external: Tensor | None = None,
) -> list:
    r"""Apply ``fn(values, keep, start)`` to the adjacency of each block of ``chunk`` query
    rows (scores from :func:`map_score_chunks`).

    ``query`` ``[B, H, Tq, d]`` must already carry the score scale
    (:math:`\alpha / \sqrt{d}`); ``external`` is an optional ``[B, Tq, Tk]`` external
    adjacency of the query rows. When gradients are needed each block is checkpointed,
    so only ``fn``'s outputs (not the ``[B, H, chunk, Tk]`` scores) are kept for the
    backward pass.
    """

    def activate(scores: Tensor, valid: Tensor, start: int):
        rows = scores.size(2)
        ext = None if external is None else external[:, None, start : start + rows]
        values, keep = adjacency_block(scores, valid, spec, ext)
        return fn(values, keep, start)

    needs_grad = torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad
        or (isinstance(spec.tau, Tensor) and spec.tau.requires_grad)
        or (external is not None and external.requires_grad)
    )
    return map_score_chunks(
        activate, query, key, attention_mask=attention_mask, query_offset=query_offset,
        chunk=chunk, checkpointed=needs_grad and query.size(2) > chunk,
    )


def _grouped(x: Tensor, heads_kv: int) -> Tensor:
    """``[B, H, rows, n]`` -> ``[B, Hkv, (H / Hkv) * rows, n]`` (heads of one group stacked)."""
    b, h, rows, n = x.shape
    return x.reshape(b, heads_kv, (h // heads_kv) * rows, n)


def _recomputed_probs(scores: Tensor, valid: Tensor, lse: Tensor, start: int) -> Tensor:
    r""":math:`P = \exp(S - \ell)` of a block of rows from its scores and the saved row
    log-sum-exp ``lse [B, H, Tq]`` (0 off ``valid``), in place on ``scores``."""
    rows = scores.size(2)
    return scores.masked_fill_(~valid, -math.inf).sub_(lse[:, :, start:start + rows, None]).exp_()


def _add_score_grads(grad_scores: Tensor, query: Tensor, key: Tensor, start: int,
                    grad_query: Tensor, grad_key: Tensor) -> None:
    r"""Back-propagate :math:`\partial S` of a block of rows ``start ..`` (``[B, H, rows,
    K]``, scores :math:`S = Q K^\top` with grouped-query keys) into ``grad_query``
    (:math:`\partial S\, K`) and ``grad_key`` (:math:`\partial S^\top Q`, accumulated over
    the heads of each key head)."""
    batch, heads, rows, width = grad_scores.shape
    heads_kv = key.size(1)
    stop = start + rows
    grad_query[:, :, start:stop] = torch.matmul(
        grad_scores.reshape(batch, heads_kv, heads // heads_kv, rows, width),
        key[:, :, :width].unsqueeze(2),
    ).reshape(batch, heads, rows, -1)
    grad_key[:, :, :width] += torch.matmul(
        _grouped(grad_scores, heads_kv).transpose(-1, -2),
        _grouped(query[:, :, start:stop], heads_kv),
    )


class _SparseSoftmaxEdges(torch.autograd.Function):
    r"""Edges and weights of a sparse softmax adjacency (``top_k``, ``relu_threshold``)
    without keeping or re-selecting any ``[B, H, chunk, Tk]`` block for the backward.

    Forward, per query chunk (:func:`map_score_chunks`, causal keys only): the row
    log-sum-exp :math:`\ell_i`, then the kept pairs (``top_k``: ``topk`` of the masked
    scores, ``relu_threshold``: :math:`p_{ij} > \tau`) and their probabilities
    :math:`p_e`. Saved: ``query``, ``key``, :math:`\ell` ``[B, H, Tq]`` and the ``O(E)``
    edge lists. Backward, per chunk: with :math:`g_e` the gradient of the edge weight
    and :math:`c_i = \sum_{e \in i} g_e p_e`,
    :math:`\partial S_{im} = [m \text{ kept}]\, g_m p_m - p_{im} c_i` (``p`` recomputed
    from the scores and :math:`\ell`), then ``dS K`` and ``dS^T Q``; for
    ``relu_threshold`` :math:`\partial \tau = -\sum_e g_e`.

    Returns ``(edge_weight [E], edge_index [2, E])``, edges sorted by target, then source.
    """

    @staticmethod
    def forward(ctx, query, key, tau, spec, attention_mask, query_offset, chunk):
        heads = query.size(1)
        num_keys = key.size(2)
        tau_value = tau if tau is not None else spec.tau
        parts = []

        def select(scores: Tensor, valid: Tensor, start: int):
            masked = scores.masked_fill(~valid, -math.inf)
            lse = torch.logsumexp(masked, -1)
            if spec.activation == "top_k":
                k_row = _row_k(spec, valid)
                k_max = min(int(k_row.max()), scores.size(-1))
                # a fixed k keeps the whole top set: no ranks, no sorted topk needed
                fixed = isinstance(spec.top_k, int)
                top, index = masked.topk(k_max, dim=-1, sorted=not fixed)
                keep = top > -math.inf
                if not fixed:
                    keep = keep & (torch.arange(k_max, device=scores.device) < k_row)
                index, order = index.sort(-1)  # edges of a row by source
                top, keep = top.gather(-1, order), keep.gather(-1, order)
                b, h, i, r = keep.nonzero(as_tuple=True)
                j = index[b, h, i, r]
                prob = torch.exp(top[b, h, i, r] - lse[b, h, i])
                weight = prob
            else:  # relu_threshold: the same probabilities as adjacency_block
                probs = torch.softmax(
                    scores.masked_fill(~valid, torch.finfo(scores.dtype).min), -1
                )
                keep = valid & (probs > tau_value)
                b, h, i, j = keep.nonzero(as_tuple=True)
                prob = probs[b, h, i, j]
                weight = prob - tau_value
            # empty rows: +inf, so the recomputed probabilities are 0
            lse = lse.masked_fill(lse == -math.inf, math.inf)
            parts.append((b, h, i + start, j, prob, weight, lse))

        map_score_chunks(
            select, query, key, attention_mask=attention_mask, query_offset=query_offset,
            chunk=chunk, causal_keys=True,
        )
        b, h, i, j, prob, weight = (torch.cat([p[k] for p in parts]) for k in range(6))
        lse = torch.cat([p[6] for p in parts], dim=2)
        graph = b * heads + h
        source = graph * num_keys + j
        target = graph * num_keys + query_offset + i
        order = None
        if len(parts) > 1:  # chunk-major -> sorted by target (then source, stable)
            order = torch.argsort(target, stable=True)
            source, target, weight = source[order], target[order], weight[order]
        edge_index = torch.stack([source, target])
        ctx.mark_non_differentiable(edge_index)
        ctx.save_for_backward(query, key, lse, b, h, i, j, prob)
        ctx.order = order
        ctx.spec, ctx.mask, ctx.offset, ctx.chunk = spec, attention_mask, query_offset, chunk
        ctx.tau_is_tensor = tau is not None
        return weight, edge_index

    @staticmethod
    def backward(ctx, grad_weight, _):
        query, key, lse, b, h, i, j, prob = ctx.saved_tensors
        batch, heads, num_queries, _ = query.shape
        if ctx.order is not None:  # back to the chunk-major order of the saved edges
            grad = torch.empty_like(grad_weight)
            grad[ctx.order] = grad_weight
        else:
            grad = grad_weight
        gp = grad * prob
        row = (b * heads + h) * num_queries + i
        c = query.new_zeros(batch * heads * num_queries).index_add_(0, row, gp)
        c = c.view(batch, heads, num_queries, 1)
        grad_query = torch.zeros_like(query)
        grad_key = torch.zeros_like(key)
        chunk_of_edge = i // ctx.chunk

        def grad_block(scores: Tensor, valid: Tensor, start: int):
            rows, width = scores.size(2), scores.size(3)
            stop = start + rows
            ds = _recomputed_probs(scores, valid, lse, start).mul_(-c[:, :, start:stop])
            sel = (chunk_of_edge == start // ctx.chunk).nonzero().squeeze(1)
            flat = ((b[sel] * heads + h[sel]) * rows + i[sel] - start) * width + j[sel]
            ds.view(-1).index_add_(0, flat, gp[sel])
            _add_score_grads(ds, query, key, start, grad_query, grad_key)

        with torch.no_grad():
            map_score_chunks(
                grad_block, query, key, attention_mask=ctx.mask, query_offset=ctx.offset,
                chunk=ctx.chunk, causal_keys=True,
            )
        grad_tau = -grad_weight.sum() if ctx.tau_is_tensor and ctx.needs_input_grad[2] \
            else None
        return grad_query, grad_key, grad_tau, None, None, None, None


def sparse_head_edges(
    query: Tensor,
    key: Tensor,
    spec: AdjacencySpec,
    *,
    attention_mask: Tensor | None = None,
    query_offset: int = 0,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""``(edge_index [2, E], edge_weight [E])`` of a sparse adjacency (``top_k`` or
    ``relu_threshold``, no external adjacency), node ids as in :func:`head_graphs`, edges
    sorted by target, then source; differentiable w.r.t. ``query``, ``key`` and
    ``spec.tau`` (see :class:`_SparseSoftmaxEdges`: memory ``O(B H T d + E)``)."""
    if not spec.is_sparse:
        raise ValueError(f"sparse_head_edges needs a sparse activation, got {spec!r}")
    chunk = chunk or chunk_rows(query.size(0), query.size(1), key.size(2))
    tau = spec.tau if isinstance(spec.tau, Tensor) and spec.activation != "top_k" else None
    weight, edge_index = _SparseSoftmaxEdges.apply(
        query, key, tau, spec, attention_mask, query_offset, chunk
    )
    return edge_index, weight


def head_graphs(
    query: Tensor,
    key: Tensor,
    spec: AdjacencySpec,
    *,
    attention_mask: Tensor | None = None,
    query_offset: int = 0,
    chunk: int | None = None,
    external: Tensor | None = None,
) -> AttentionGraph:
    r"""One causal graph per (sequence, head): ``B * H`` graphs of ``Tk`` nodes.

    Node ``(b * H + h) * Tk + t`` is token ``t`` of sequence ``b`` seen by head ``h``;
    an edge ``j -> i`` (``edge_index[0] = j <= i = edge_index[1]`` inside one graph) has
    weight :math:`A'_{h,ij}`, differentiable w.r.t. ``query``, ``key`` and ``spec.tau``.
    Only kept pairs become edges (for ``top_k``/``relu_threshold`` a sparse graph, built
    by :func:`sparse_head_edges` when there is no external adjacency). Edges are sorted
    by target, then source (a CSR order over targets).

    Args:
        query: ``[B, H, Tq, d]`` scaled post-RoPE queries (:math:`\alpha / \sqrt{d}`
            already applied).
        key: ``[B, Hkv, Tk, d]`` post-RoPE keys, ``H % Hkv == 0``.
        spec: the activation.
        attention_mask: ``[B, Tk]`` bool, ``True`` for real tokens.
        query_offset: position of the first query (``Tk - Tq`` with a KV cache).
        chunk: query rows scored at once (default: bounded by :data:`BLOCK_ELEMENTS`).
        external: optional ``[B, Tq, Tk]`` external adjacency added to every head.

    Returns:
        An :class:`~pyg_transformer.graph.AttentionGraph` with ``batch_size = B * H``.
    """
    batch, heads, _, _ = query.shape
    num_keys = key.size(2)
    chunk = chunk or chunk_rows(batch, heads, num_keys)

    if spec.is_sparse and external is None:
        edge_index, edge_weight = sparse_head_edges(
            query, key, spec, attention_mask=attention_mask, query_offset=query_offset,
            chunk=chunk,
        )
        return AttentionGraph.from_coo(edge_index, edge_weight, batch_size=batch * heads,
                                       seq_len=num_keys, query_offset=query_offset)

    def edges(values: Tensor, keep: Tensor, start: int):
        b, h, i, j = keep.nonzero(as_tuple=True)
        graph = b * heads + h
        source = graph * num_keys + j
        target = graph * num_keys + query_offset + start + i
        return torch.stack([source, target]), values[b, h, i, j]

    parts = map_query_chunks(
        edges, query, key, spec, attention_mask=attention_mask,
        query_offset=query_offset, chunk=chunk, external=external,
    )
    edge_index = torch.cat([p[0] for p in parts], dim=1)
    edge_weight = torch.cat([p[1] for p in parts])
    if len(parts) > 1:  # chunk-major -> sorted by target (then source)
        order = torch.argsort(edge_index[1], stable=True)
        edge_index, edge_weight = edge_index[:, order], edge_weight[order]
    return AttentionGraph.from_coo(edge_index, edge_weight, batch_size=batch * heads,
                                   seq_len=num_keys, query_offset=query_offset)


def padding_safe_mask(
    attention_mask: Tensor | None, num_queries: int, num_keys: int, device
) -> tuple[Tensor | None, bool]:
    """Boolean ``[B, 1, Tq, Tk]`` SDPA mask (or ``None``) and whether ``is_causal`` applies.

    Padding query rows may attend to themselves only, so no row is empty (which would
    give NaN); their outputs are zeroed by the caller.
    """
    offset = num_keys - num_queries
    if attention_mask is None or bool(attention_mask.all()):
        if num_queries == num_keys:
            return None, True
        if num_queries == 1:
            return None, False
        positions = torch.arange(offset, num_keys, device=device)
        return causal_valid_mask(1, positions, num_keys, None)[:, None], False
    positions = torch.arange(offset, num_keys, device=device)
    valid = causal_valid_mask(attention_mask.size(0), positions, num_keys, attention_mask)
    diagonal = positions.view(-1, 1) == torch.arange(num_keys, device=device).view(1, -1)
    return (valid | diagonal)[:, None], False


def scaled_softmax_aggregate(
    query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None
) -> Tensor:
    r""":math:`\operatorname{softmax}(Q K^\top + M) V` through
    :func:`torch.nn.functional.scaled_dot_product_attention` (``query`` pre-scaled, so the
    kernel's scale is 1); padding query rows give 0.

    Shapes: ``query [B, H, Tq, d]``, ``key [B, Hkv, Tk, d]``, ``value [B, H, Tk, F]``.
    """
    num_queries, num_keys = query.size(2), key.size(2)
    mask, is_causal = padding_safe_mask(attention_mask, num_queries, num_keys, query.device)
    groups = query.size(1) // key.size(1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=is_causal, scale=1.0
    )
    if attention_mask is not None and not bool(attention_mask.all()):
        real = attention_mask[:, num_keys - num_queries :]
        out = out * real[:, None, :, None].to(out.dtype)
    return out


def score_scale(alpha: Tensor | float, head_dim: int) -> Tensor | float:
    r""":math:`\alpha / \sqrt{d}`."""
    return alpha / math.sqrt(head_dim)
