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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pyg_transformer.graph import AttentionGraph
from pyg_transformer.graph.construction import causal_valid_mask
from pyg_transformer.options import ADJACENCY_ACTIVATIONS

__all__ = [
    "ADJACENCY_ACTIVATIONS",
    "SPARSE_ACTIVATIONS",
    "AdjacencySpec",
    "adjacency_block",
    "chunk_rows",
    "head_graphs",
    "map_query_chunks",
    "padding_safe_mask",
    "scaled_softmax_aggregate",
    "score_scale",
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
        elif act == "relu_threshold":
            shifted = probs - spec.tau
            keep = valid & (shifted > 0)
            values = F.relu(shifted)
        else:
            k_row = _row_k(spec, valid)
            k_max = min(int(k_row.max()), scores.size(-1))
            top = probs.masked_fill(~valid, -1.0).topk(k_max, dim=-1).indices
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


def _scores(query: Tensor, key: Tensor) -> Tensor:
    """``[B, H, rows, Tk]`` scores with grouped-query keys ``[B, Hkv, Tk, d]``."""
    b, h, rows, d = query.shape
    hkv = key.size(1)
    grouped = query.reshape(b, hkv, h // hkv, rows, d)
    return torch.matmul(grouped, key.unsqueeze(2).transpose(-1, -2)).reshape(b, h, rows, -1)


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
    r"""Apply ``fn(values, keep)`` to the adjacency of each block of ``chunk`` query rows.

    ``query`` ``[B, H, Tq, d]`` must already carry the score scale
    (:math:`\alpha / \sqrt{d}`); ``external`` is an optional ``[B, Tq, Tk]`` external
    adjacency of the query rows. When gradients are needed each block is checkpointed,
    so only ``fn``'s outputs (not the ``[B, H, chunk, Tk]`` scores) are kept for the
    backward pass.
    """
    batch, _, num_queries, _ = query.shape
    num_keys = key.size(2)
    out = []

    def block(q_chunk: Tensor, key: Tensor, start: int):
        positions = torch.arange(
            query_offset + start, query_offset + start + q_chunk.size(2), device=query.device
        )
        valid = causal_valid_mask(batch, positions, num_keys, attention_mask)[:, None]
        ext = None if external is None else external[:, None, start : start + q_chunk.size(2)]
        values, keep = adjacency_block(_scores(q_chunk, key), valid, spec, ext)
        return fn(values, keep, start)

    needs_grad = torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad
        or (isinstance(spec.tau, Tensor) and spec.tau.requires_grad)
        or (external is not None and external.requires_grad)
    )
    for start in range(0, num_queries, chunk):
        q_chunk = query[:, :, start : start + chunk]
        if needs_grad and num_queries > chunk:
            out.append(checkpoint(block, q_chunk, key, start, use_reentrant=False))
        else:
            out.append(block(q_chunk, key, start))
    return out


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
    Only kept pairs become edges (for ``top_k``/``relu_threshold`` a sparse graph).

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
    num_graphs = batch * heads
    return AttentionGraph(
        edge_index=edge_index,
        edge_weight=edge_weight,
        batch=torch.arange(num_graphs, device=query.device).repeat_interleave(num_keys),
        num_nodes=num_graphs * num_keys,
        batch_size=num_graphs,
        seq_len=num_keys,
        query_offset=query_offset,
    )


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
