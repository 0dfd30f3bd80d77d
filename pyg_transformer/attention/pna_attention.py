"""PNA-Attention: several weighted aggregators over each head's attention graph.

Per head: sum ``A'X``, mean ``A'X / deg``, weighted max and variance over the causal
graph, concatenated, ``W2 SiLU(W1 z)`` back to ``d``, then ``o_proj``; optionally
``Y = (1 - lam) Y_attn + lam Y_pna`` (Buehler 2025, §2.1.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import MaxAggregation, SumAggregation

from pyg_transformer.attention.adjacency import (
    chunk_rows,
    map_query_chunks,
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
                     first_position: int) -> Tensor:
    r"""``[B, H, rows, d]`` index :math:`j^*` of :math:`\max_{j: keep_{ij}} A'_{ij} F_{jk}`
    (the first one on ties), row ``i`` at position ``first_position + i``.

    Exact, in two levels: per block of :data:`_MAX_ROWS` rows (all sequences and heads
    at once), the products ``[B H, rows, Tk', d]`` (causal keys only, in one reused
    buffer) are reduced with ``amax`` over key blocks of :data:`_MAX_KEYS`; the first
    winning block, then the first winning key inside it (one gather of
    ``rows x 16 x d``), give :math:`j^*`. Only the block's causal triangle is masked
    when ``keep`` is exactly the causal pattern."""
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
    buffer = values.new_full((graphs, _MAX_ROWS, width, d), -math.inf)
    out = values.new_zeros((graphs, rows, d))
    for start in range(0, rows, _MAX_ROWS):
        r = min(_MAX_ROWS, rows - start)
        end = max(last[start : start + r])
        if end == 0:
            continue
        padded = -(-end // _MAX_KEYS) * _MAX_KEYS
        # causal pattern: only keys >= the block's first position can be masked
        first = min(first_position + start, end) if causal else 0
        prod = buffer[:, :r, :padded]  # keys >= end stay -inf
        torch.mul(values[:, start : start + r, :end, None], features[:, None, :end],
                  out=prod[:, :, :end])
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

    Backends: ``dense`` evaluates all aggregators on checkpointed query chunks; the max
    finds :math:`j^*` without autograd in bounded ``[B, H, rows, Tk, d]`` blocks and is
    then differentiated through :math:`A'_{ij^*} F_{j^*k}` (two gathers); ``pyg`` builds
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
