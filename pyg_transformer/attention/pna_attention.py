"""PNA-Attention: several weighted aggregators over each head's attention graph.

Per head: sum ``A'X``, mean ``A'X / deg``, weighted max and variance over the causal
graph, concatenated, ``W2 SiLU(W1 z)`` back to ``d``, then ``o_proj``; optionally
``Y = (1 - lam) Y_attn + lam Y_pna`` (Buehler 2025, §2.1.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch_geometric.nn.aggr import MaxAggregation, SumAggregation

from pyg_transformer.attention.adjacency import (
    _add_score_grads,
    _recomputed_probs,
    chunk_rows,
    map_query_chunks,
    map_score_chunks,
    scaled_softmax_aggregate,
)
from pyg_transformer.attention.base import GraphAttentionBase
from pyg_transformer.attention.headwise import HeadwisePNAMLP


def _first_max_index(x: Tensor, dim: int) -> Tensor:
    """Index (as ``x.dtype``) of the first maximum of ``x`` along ``dim``, through ``amax``
    only (much faster on CPU than ``argmax``/``max`` over a non-last dimension)."""
    n = x.size(dim)
    shape = [1] * x.dim()
    shape[dim] = n
    rank = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device).view(shape)  # n .. 1
    return n - torch.where(x == x.amax(dim, keepdim=True), rank, 0.0).amax(dim)


#: rows and keys per block of :func:`_weighted_argmax`
_MAX_ROWS, _MAX_KEYS = 8, 16


def _weighted_argmax(values: Tensor, keep: Tensor, features: Tensor,
                     first_position: int, buffer: Tensor | None = None) -> Tensor:
    r"""``[B, H, rows, d]`` index :math:`j^*` of :math:`\max_{j: keep_{ij}} A'_{ij} F_{jk}`
    (the first one on ties), row ``i`` at position ``first_position + i``.

    Exact, in two levels: per block of :data:`_MAX_ROWS` rows (all sequences and heads
    at once), the products ``[B H, rows, Tk', d]`` (causal keys only, in one reused
    buffer) are reduced with ``amax`` over key blocks of :data:`_MAX_KEYS`; the first
    winning block, then the first winning key inside it (one gather of
    ``rows x 16 x d``), give :math:`j^*`. Only the block's causal triangle is masked
    when ``keep`` is exactly the causal pattern. ``buffer`` (optional, from
    :func:`_argmax_buffer`, at least as wide as the keys) is reused across calls."""
    batch, heads, rows, num_keys = values.shape
    d = features.size(-1)
    graphs = batch * heads
    values, features = values.flatten(0, 1), features.flatten(0, 1)
    keep = keep.expand(batch, heads, rows, num_keys).flatten(0, 1)
    positions = torch.arange(first_position + 1, first_position + rows + 1,
                             device=values.device)
    causal = bool(int(keep.sum()) == graphs * int(positions.clamp(max=num_keys).sum()))
    kept_key = torch.arange(1, num_keys + 1, device=values.device) * keep.any(0)
    last = kept_key.amax(-1).tolist()  # per row: 1 + last kept key (0: none)
    width = -(-num_keys // _MAX_KEYS) * _MAX_KEYS
    if buffer is None or buffer.size(2) < width:
        buffer = _argmax_buffer(values, graphs, num_keys, d)
    out = values.new_zeros((graphs, rows, d))
    for start in range(0, rows, _MAX_ROWS):
        r = min(_MAX_ROWS, rows - start)
        end = max(last[start : start + r])
        if end == 0:
            continue
        padded = -(-end // _MAX_KEYS) * _MAX_KEYS
        # causal pattern: only keys >= the block's first position can be masked
        first = min(first_position + start, end) if causal else 0
        prod = buffer[:, :r, :padded]
        torch.mul(values[:, start : start + r, :end, None], features[:, None, :end],
                  out=prod[:, :, :end])
        prod[:, :, end:].fill_(-math.inf)  # (a previous block may have written there)
        prod[:, :, first:end].masked_fill_(
            ~keep[:, start : start + r, first:end, None], -math.inf
        )
        blocks = prod.view(graphs, r, padded // _MAX_KEYS, _MAX_KEYS, d)
        block = _first_max_index(blocks.amax(-2), -2)  # [BH, r, d]
        inside = blocks.gather(
            2, block.long()[:, :, None, None].expand(graphs, r, 1, _MAX_KEYS, d)
        ).squeeze(2)
        torch.add(_first_max_index(inside, -2), block, alpha=_MAX_KEYS,
                  out=out[:, start : start + r])
    return out.long().view(batch, heads, rows, d)


def _argmax_buffer(like: Tensor, graphs: int, num_keys: int, d: int) -> Tensor:
    """The ``[B H, rows, keys, d]`` product buffer of :func:`_weighted_argmax`."""
    width = -(-num_keys // _MAX_KEYS) * _MAX_KEYS
    return like.new_empty((graphs, _MAX_ROWS, width, d))


#: query rows per chunk of :class:`_PNASoftmaxAggregations` (at most): small chunks score
#: fewer causally invisible keys (``T = 1024``: 56 % of the full ``T x T`` at 128 rows,
#: 75 % at 512)
_SOFTMAX_CHUNK = 128


class _PNASoftmaxAggregations(torch.autograd.Function):
    r"""Sum, squares, degree and weighted max of a ``softmax`` adjacency (no external
    adjacency) over the query chunks of :func:`map_score_chunks` (causal keys only),
    in the style of flash attention: no ``[B, H, chunk, Tk]`` block is kept and each is
    recomputed once in the backward pass (scores and probabilities, not the
    aggregations as activation checkpointing would).

    Forward, per chunk: :math:`P = \operatorname{softmax}(S)` on the valid pairs, the row
    log-sum-exp :math:`\ell_i = \max_j S_{ij} - \log \max_j P_{ij}`, ``[sum, squares] =
    P [F, F^2]``, the degree (1 on rows with a valid key, else 0: :math:`\sum_j P_{ij}`
    is constant, so it has no gradient) and the max :math:`P_{ij^*} F_{j^*k}` with
    :math:`j^*` from :func:`_weighted_argmax`. Saved: ``query``, ``key``, ``features``,
    :math:`\ell` ``[B, H, Tq]``, :math:`j^*` ``[B, H, Tq, d]`` and the outputs.

    Backward, per chunk: :math:`P = e^{S - \ell}`, with the output gradients
    :math:`g_T, g_S, g_M`: :math:`\partial P = [g_T, g_S] [F, F^2]^\top` plus
    :math:`g_{M,ik} F_{j^*k}` at :math:`j^*`, :math:`\partial S = P \odot (\partial P - c)`
    with :math:`c_i = \sum_j P_{ij} \partial P_{ij} = \sum_k (g_T T + g_S Q + g_M M)_{ik}`
    (from the saved outputs), then ``dS K``, ``dS^T Q`` and
    :math:`\partial F = P^\top g_T + 2 F \odot P^\top g_S` plus :math:`g_{M,ik} P_{ij^*}` at
    :math:`j^*`.

    Returns ``(total, squares, degree, maximum)`` (``squares``/``maximum``: empty
    tensors when not requested).
    """

    @staticmethod
    def forward(ctx, query, key, features, attention_mask, query_offset, chunk,
                need_var, need_max):
        d = features.size(-1)
        values_of = torch.cat([features, features * features], -1) if need_var else features
        lse_parts, index_parts, outputs = [], [], []
        buffer = (_argmax_buffer(features, query.size(0) * query.size(1), key.size(2), d)
                  if need_max else None)

        def block(scores: Tensor, valid: Tensor, start: int):
            width = scores.size(-1)
            has_key = valid.any(-1, keepdim=True)  # [B, 1, rows, 1]
            masked = scores.masked_fill_(~valid, torch.finfo(scores.dtype).min)
            row_max = masked.amax(-1)
            probs = torch.softmax(masked, -1)
            lse = row_max - probs.amax(-1).log()  # max_j P_ij = 1 / sum_j e^(S_ij - max)
            empty = not bool(has_key.all())
            if empty:  # rows without a valid key: P = 0 (and e^(S - inf) = 0 later)
                probs.masked_fill_(~has_key, 0.0)
                lse = lse.masked_fill(~has_key[..., 0], math.inf)
            summed = torch.matmul(probs, values_of[:, :, :width])
            maximum = None
            if need_max:
                index = _weighted_argmax(probs, valid, features,
                                         query_offset + start, buffer)
                maximum = probs.gather(-1, index) * features.gather(2, index)
                if empty:
                    maximum.masked_fill_(~has_key, 0.0)
                index_parts.append(index)
            lse_parts.append(lse)
            outputs.append((summed, has_key, maximum))

        map_score_chunks(
            block, query, key, attention_mask=attention_mask, query_offset=query_offset,
            chunk=chunk, causal_keys=True,
        )
        summed = torch.cat([o[0] for o in outputs], dim=2)
        total = summed[..., :d].contiguous() if need_var else summed
        squares = summed[..., d:].contiguous() if need_var else summed.new_empty(0)
        degree = torch.cat([o[1] for o in outputs], dim=2).to(summed.dtype)
        degree = degree.expand(-1, query.size(1), -1, -1).contiguous()
        maximum = (torch.cat([o[2] for o in outputs], dim=2) if need_max
                   else summed.new_empty(0))
        index = torch.cat(index_parts, dim=2) if need_max else None
        lse = torch.cat(lse_parts, dim=2)
        ctx.mark_non_differentiable(degree)
        ctx.save_for_backward(query, key, features, lse, index, total, squares, maximum)
        ctx.mask, ctx.offset, ctx.chunk = attention_mask, query_offset, chunk
        ctx.need_var, ctx.need_max = need_var, need_max
        return total, squares, degree, maximum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, grad_squares, _, grad_max):
        query, key, features, lse, index, total, squares, maximum = ctx.saved_tensors
        need_var, need_max = ctx.need_var, ctx.need_max
        # c_i = sum_j P_ij dP_ij = sum_k g_ik out_ik
        c = (grad_total * total).sum(-1, keepdim=True)
        values_of, grads = features, grad_total
        if need_var:
            c = c + (grad_squares * squares).sum(-1, keepdim=True)
            values_of = torch.cat([features, features * features], -1)
            grads = torch.cat([grad_total, grad_squares], -1)
        if need_max:
            c = c + (grad_max * maximum).sum(-1, keepdim=True)
            # d max_ik / d P_ij* = F_j*k, d max_ik / d F_j*k = P_ij*
            max_to_p = grad_max * features.gather(2, index)
        grad_query = torch.zeros_like(query)
        grad_key = torch.zeros_like(key)
        grad_values = torch.zeros_like(values_of)
        grad_features = torch.zeros_like(features)

        def grad_block(scores: Tensor, valid: Tensor, start: int):
            rows, width = scores.size(2), scores.size(3)
            stop = start + rows
            probs = _recomputed_probs(scores, valid, lse, start)
            g = grads[:, :, start:stop]
            dp = torch.matmul(g, values_of[:, :, :width].transpose(-1, -2))
            grad_values[:, :, :width] += torch.matmul(probs.transpose(-1, -2), g)
            if need_max:
                idx = index[:, :, start:stop]
                dp.scatter_add_(-1, idx, max_to_p[:, :, start:stop])
                grad_features.scatter_add_(
                    2, idx, grad_max[:, :, start:stop] * probs.gather(-1, idx)
                )
            ds = dp.sub_(c[:, :, start:stop]).mul_(probs)
            _add_score_grads(ds, query, key, start, grad_query, grad_key)

        map_score_chunks(
            grad_block, query, key, attention_mask=ctx.mask, query_offset=ctx.offset,
            chunk=ctx.chunk, causal_keys=True,
        )
        d = features.size(-1)
        grad_features += grad_values[..., :d]
        if need_var:
            grad_features.addcmul_(features, grad_values[..., d:], value=2.0)
        return grad_query, grad_key, grad_features, None, None, None, None, None


class PNAAttention(GraphAttentionBase):
    r"""PNA-Attention of one decoder layer (Buehler 2025, §2.1.3).

    With :math:`A'_h` as in :class:`GINAttention`, node features :math:`F_h` (:math:`X_h`
    or :math:`V_h`) and weighted degree :math:`\deg_i = \sum_j A'_{ij}`:

    .. math::
        \mathrm{sum}_i = \sum_j A'_{ij} F_j, \quad
        \mathrm{mean}_i = \frac{\mathrm{sum}_i}{\deg_i}, \quad
        \mathrm{max}_i = \max_{j: A'_{ij} > 0} A'_{ij} F_j, \quad
        \mathrm{var}_i = \frac{\sum_j A'_{ij} F_j^2}{\deg_i} - \mathrm{mean}_i^2

    (0 for a node without neighbours), concatenated in ``pna_aggregators`` order,
    :math:`Y_{pna,h} = W_{2,h}\,\mathrm{SiLU}(W_{1,h} z_h)` per head, and with
    ``pna_blend`` :math:`Y = (1 - \lambda) Y_{attn} + \lambda Y_{pna}` where
    :math:`Y_{attn,h} = \mathrm{softmax}(Q_h K_h^\top / \sqrt{d}) F_h` and
    :math:`\lambda = \sigma(\text{blend\_logit}) \in [0, 1]`; then the heads are
    concatenated and projected by the optional ``o_proj``.

    Backends: ``dense`` evaluates all aggregators on query chunks: for ``softmax``
    without external adjacency in :class:`_PNASoftmaxAggregations` (a flash-attention
    style custom backward: each chunk's scores and probabilities are recomputed once,
    nothing ``[B, H, Tq, Tk]`` is kept), otherwise on checkpointed chunks; the max finds
    :math:`j^*` without autograd in bounded ``[B, H, rows, Tk, d]`` blocks and is
    differentiated through :math:`A'_{ij^*} F_{j^*k}`; ``pyg`` builds
    ``B * H`` causal graphs and uses PyG's :class:`~torch_geometric.nn.aggr.SumAggregation` and
    :class:`~torch_geometric.nn.aggr.MaxAggregation` on the weighted messages
    :math:`A'_{ij} F_j`.

    Shapes:
        - **input:** ``hidden_states [B, Tq, D]``, ``attention_mask [B, Tk]`` *(optional)*
        - **output:** ``([B, Tq, D], None)``
    """

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.aggregators = list(config.pna_aggregators)
        self.mlp = HeadwisePNAMLP(
            self.num_heads,
            len(self.aggregators) * self.head_dim,
            config.gin_mlp_hidden_size,
            self.head_dim,
        )
        self.blend_logit = nn.Parameter(torch.zeros(())) if config.pna_blend else None
        self.sum_aggr = SumAggregation()
        self.max_aggr = MaxAggregation()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.blend_logit is not None:
            with torch.no_grad():
                self.blend_logit.zero_()

    @property
    def blend(self) -> Tensor | None:
        r""":math:`\lambda \in [0, 1]` or ``None`` without ``pna_blend``."""
        return None if self.blend_logit is None else torch.sigmoid(self.blend_logit)

    def _finish(self, total: Tensor, degree: Tensor, squares: Tensor | None,
                maximum: Tensor | None) -> Tensor:
        safe = degree.masked_fill(degree == 0, 1.0)
        mean = total / safe
        parts = {"sum": total, "mean": mean, "max": maximum}
        if squares is not None:
            parts["var"] = squares / safe - mean * mean
        return torch.cat([parts[name] for name in self.aggregators], dim=-1)

    def aggregations(self, query: Tensor, key: Tensor, features: Tensor,
                     mask: Tensor | None, external: Tensor | None = None) -> Tensor:
        """Concatenated aggregations ``[B, H, Tq, n_aggr * d]``."""
        batch, heads, num_queries, d = query.shape
        num_keys = key.size(2)
        need_var, need_max = "var" in self.aggregators, "max" in self.aggregators
        if self.backend == "pyg":
            graph = self.graph(query, key, mask, external)
            source, target = graph.edge_index
            x = features.reshape(-1, d)
            weight = graph.edge_weight.view(-1, 1)
            messages = weight * x[source]
            stacked = [messages, weight]
            if need_var:
                stacked.append(messages * x[source])
            summed = self.sum_aggr(torch.cat(stacked, dim=-1), target, dim_size=graph.num_nodes)
            total, degree = summed[:, :d], summed[:, d : d + 1]
            squares = summed[:, d + 1 :] if need_var else None
            maximum = (
                self.max_aggr(messages, target, dim_size=graph.num_nodes) if need_max else None
            )
            out = self._finish(total, degree, squares, maximum)
            out = out.view(batch, heads, num_keys, -1)
            return out[:, :, num_keys - num_queries :]

        if self.config.adjacency_activation == "softmax" and external is None:
            total, squares, degree, maximum = _PNASoftmaxAggregations.apply(
                self.scaled_query(query), key, features, mask, num_keys - num_queries,
                min(_SOFTMAX_CHUNK, chunk_rows(batch, heads, num_keys)), need_var, need_max,
            )
            return self._finish(total, degree, squares if need_var else None,
                                maximum if need_max else None)

        # sum, squares and degree from one matmul: A' [F, F^2, 1]
        ones = features.new_ones(features.shape[:-1] + (1,))
        values_of = torch.cat([features, features * features, ones] if need_var
                              else [features, ones], -1)
        argmax_of_chunk: dict[int, Tensor] = {}  # reused when a checkpointed chunk reruns

        def block(values: Tensor, keep: Tensor, start: int) -> Tensor:
            summed = torch.matmul(values, values_of)
            total = summed[..., :d]
            squares = summed[..., d : 2 * d] if need_var else None
            degree = summed[..., -1:]
            maximum = None
            if need_max:
                index = argmax_of_chunk.get(start)
                if index is None:
                    index = _weighted_argmax(values.detach(), keep, features.detach(),
                                             num_keys - num_queries + start)
                    argmax_of_chunk[start] = index
                # max_j A'_ij F_jk = A'_{i j*} F_{j* k}: differentiable through two gathers
                maximum = values.gather(-1, index) * features.gather(2, index)
                # rows without edges: 0 (keep broadcast over heads: test one head only)
                kept = keep[:, :1] if keep.stride(1) == 0 else keep
                maximum = maximum.masked_fill(~kept.any(-1, keepdim=True), 0.0)
            return self._finish(total, degree, squares, maximum)

        parts = map_query_chunks(
            block, self.scaled_query(query), key, self.adjacency_spec, attention_mask=mask,
            query_offset=num_keys - num_queries, chunk=chunk_rows(batch, heads, num_keys),
            external=external,
        )
        return torch.cat(parts, dim=2)

    def aggregate_heads(self, query, key, features, all_features, mask,
                        external=None) -> Tensor:
        out = self.mlp(self.aggregations(query, key, all_features, mask, external))
        if self.blend_logit is not None:
            attention = scaled_softmax_aggregate(
                query * self.head_dim**-0.5, key, all_features, mask
            )
            lam = self.blend.to(out.dtype)
            out = (1 - lam) * attention + lam * out
        return out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(heads={self.num_heads}, head_dim={self.head_dim}, "
            f"aggregators={self.aggregators}, activation="
            f"{self.config.adjacency_activation!r}, backend={self.backend!r}, "
            f"blend={self.blend_logit is not None}, o_proj={self.o_proj is not None})"
        )
