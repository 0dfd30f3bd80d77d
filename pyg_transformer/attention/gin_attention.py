"""GIN-Attention: a per-head GIN over each head's causal attention graph.

``X'_h = MLP_h(eps_h X_h + A'_h X_h)`` with ``A'_h = act(alpha_l Q_h K_h^T / sqrt(d))``
and causal, non-padding edges ``j -> i``, ``j <= i`` (Buehler 2025, §2.1.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric import EdgeIndex

from pyg_transformer.attention.adjacency import (
    chunk_rows,
    map_query_chunks,
    scaled_softmax_aggregate,
)
from pyg_transformer.attention.base import GraphAttentionBase
from pyg_transformer.attention.headwise import HeadwiseGINMLP
from pyg_transformer.graph.scoring import causal_valid_mask
from pyg_transformer.nn import WeightedGINConv


class GINAttention(GraphAttentionBase):
    r"""GIN-Attention of one decoder layer (Buehler 2025, §2.1.2).

    .. math::
        A'_h = \operatorname{act}\Bigl(\alpha_l \frac{Q_h K_h^\top}{\sqrt{d}}\Bigr)
        \odot M_{\text{causal}}, \qquad
        X'_h = \operatorname{MLP}_h\bigl(\epsilon_h X_h + A'_h X_h\bigr), \qquad
        Y = \operatorname{concat}_h(X'_h)\,[W_O]

    with :math:`X_h` the head's slice of the normed layer input (or :math:`V_h` with
    ``value_projection``), trainable :math:`\epsilon_h` (init ``gin_eps_init``) and
    :math:`\operatorname{MLP}_h(z) = W_{2,h}\,\mathrm{Dropout}(\mathrm{SiLU}(
    \mathrm{RMSNorm}(W_{1,h} z)))` (:class:`~pyg_transformer.attention.headwise.HeadwiseGINMLP`,
    all heads in one batched matmul).

    Backends: ``dense`` computes :math:`A'_h X_h` with
    :func:`torch.nn.functional.scaled_dot_product_attention` for softmax (value
    :math:`X_h`, no ``T x T`` tensor kept) or with explicit scores in checkpointed query
    chunks; ``pyg`` builds ``B * H`` causal graphs
    (:func:`~pyg_transformer.attention.head_graphs`) and sums messages with
    :class:`~pyg_transformer.nn.WeightedGINConv`.

    Args:
        config: a :class:`~pyg_transformer.GraphLlamaConfig`.
        layer_idx: index of the decoder layer (KV-cache slot).

    Shapes:
        - **input:** ``hidden_states [B, Tq, D]``, ``attention_mask [B, Tk]`` *(optional)*
        - **output:** ``([B, Tq, D], None)``
    """

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.eps = nn.Parameter(torch.full((self.num_heads,), float(config.gin_eps_init)))
        self.mlp = HeadwiseGINMLP(
            self.num_heads,
            self.head_dim,
            config.gin_mlp_hidden_size,
            dropout=float(config.attention_dropout or 0.0),
            rms_norm_eps=config.rms_norm_eps,
        )
        # parameter-free weighted sum aggregation sum_j w_ji x_j (eps is per head, below)
        self.conv = WeightedGINConv(nn.Identity(), eps=0.0)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.eps.fill_(float(self.config.gin_eps_init))

    def neighbour_sum(self, query: Tensor, key: Tensor, features: Tensor,
                      mask: Tensor | None, external: Tensor | None = None) -> Tensor:
        r""":math:`A'_h F_h` for the query rows, ``[B, H, Tq, d]`` (:math:`A'_h` includes
        the external adjacency ``[B, Tq, Tk]`` if given)."""
        scaled = self.scaled_query(query)
        batch, heads, num_queries, d = query.shape
        num_keys = key.size(2)
        if self.backend == "pyg":
            graph = self.graph(query, key, mask, external)
            # head_graphs sorts edges by target: PyG's fused (CSR) message passing
            edge_index = EdgeIndex(graph.edge_index, sparse_size=(graph.num_nodes,) * 2,
                                   sort_order="col")
            out = self.conv(features.reshape(-1, d), edge_index, graph.edge_weight)
            return out.view(batch, heads, num_keys, d)[:, :, num_keys - num_queries :]
        if self.config.adjacency_activation == "softmax":
            out = scaled_softmax_aggregate(scaled, key, features, mask)
            if external is not None:
                positions = torch.arange(num_keys - num_queries, num_keys, device=query.device)
                valid = causal_valid_mask(batch, positions, num_keys, mask)
                external = external.to(out.dtype).masked_fill(~valid | (external == 0), 0.0)
                out = out + torch.matmul(external.unsqueeze(1), features)
            return out
        parts = map_query_chunks(
            lambda values, keep, start: torch.matmul(values, features),
            scaled, key, self.adjacency_spec, attention_mask=mask,
            query_offset=num_keys - num_queries,
            chunk=chunk_rows(batch, heads, num_keys), external=external,
        )
        return torch.cat(parts, dim=2)

    def aggregate_heads(self, query, key, features, all_features, mask,
                        external=None) -> Tensor:
        neighbours = self.neighbour_sum(query, key, all_features, mask, external)
        z = self.eps.view(1, -1, 1, 1).to(features.dtype) * features + neighbours
        return self.mlp(z)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(heads={self.num_heads}, head_dim={self.head_dim}, "
            f"activation={self.config.adjacency_activation!r}, backend={self.backend!r}, "
            f"mlp_hidden={self.config.gin_mlp_hidden_size}, o_proj={self.o_proj is not None}, "
            f"value_projection={self.v_proj is not None})"
        )
