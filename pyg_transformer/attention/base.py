"""Shared part of GIN- and PNA-Attention: projections, RoPE, sharpening, cache, graphs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from pyg_transformer.attention.adjacency import AdjacencySpec, head_graphs, score_scale
from pyg_transformer.graph import AttentionGraph
from pyg_transformer.graph.validation import check_padding_mask


class GraphAttentionBase(nn.Module):
    r"""Queries, keys and node features of one decoder layer's graph attention.

    Holds ``q_proj`` (``D -> H d``), ``k_proj`` (``D -> H_kv d``, grouped-query keys),
    the optional ``v_proj`` (``D -> H d``, ``value_projection``) and ``o_proj``
    (``use_o_proj``), the sharpening :math:`\alpha_l = e^{\text{log\_alpha}}` and
    :math:`\tau_l`. Node features of head ``h`` are :math:`X_h` (the head's slice of the
    normed hidden state) or :math:`V_h`. The KV cache stores post-RoPE keys in its key
    slot and node features in its value slot.

    Subclasses implement :meth:`aggregate_heads`.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.backend = config.resolved_graph_backend
        hidden, heads, bias = config.hidden_size, self.num_heads, config.attention_bias
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = (
            nn.Linear(hidden, heads * self.head_dim, bias=bias)
            if config.value_projection else None
        )
        self.o_proj = (
            nn.Linear(heads * self.head_dim, hidden, bias=bias) if config.use_o_proj else None
        )
        if config.sharpening:
            self.log_alpha = nn.Parameter(torch.tensor(math.log(config.sharpening_init)))
        else:
            self.log_alpha = None  # fixed alpha = config.sharpening_init
        if config.adjacency_tau_trainable:
            self.tau = nn.Parameter(torch.tensor(float(config.adjacency_tau)))
        else:
            self.tau = float(config.adjacency_tau)

    def reset_parameters(self) -> None:
        """Reset the graph scalars (projections are initialised by the model)."""
        with torch.no_grad():
            if self.log_alpha is not None:
                self.log_alpha.fill_(math.log(self.config.sharpening_init))
            if isinstance(self.tau, Tensor):
                self.tau.fill_(float(self.config.adjacency_tau))

    @property
    def alpha(self) -> Tensor:
        r"""The sharpening :math:`\alpha_l > 0` (0-dim tensor)."""
        if self.log_alpha is None:
            return torch.tensor(float(self.config.sharpening_init))
        return self.log_alpha.exp()

    @property
    def adjacency_spec(self) -> AdjacencySpec:
        return AdjacencySpec(
            self.config.adjacency_activation,
            beta=float(self.config.adjacency_beta),
            tau=self.tau,
            top_k=self.config.adjacency_top_k,
        )

    def project(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        cache=None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Post-RoPE queries ``[B, H, Tq, d]``, keys ``[B, Hkv, Tk, d]``, node features
        of the current tokens ``[B, H, Tq, d]`` and of all keys ``[B, H, Tk, d]``."""
        batch, tokens, _ = hidden_states.shape
        d = self.head_dim
        query = self.q_proj(hidden_states).view(batch, tokens, -1, d).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, tokens, -1, d).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        source = hidden_states if self.v_proj is None else self.v_proj(hidden_states)
        features = source.view(batch, tokens, -1, d).transpose(1, 2)
        all_features = features
        if cache is not None:
            key, all_features = cache.update(key, features, self.layer_idx)
        return query, key, features, all_features

    @staticmethod
    def check_mask(attention_mask, batch: int, num_keys: int) -> Tensor | None:
        """The 2D padding mask ``[B, Tk]`` as bool, or ``None``
        (:func:`~pyg_transformer.graph.validation.check_padding_mask`)."""
        return check_padding_mask(attention_mask, batch, num_keys)

    @staticmethod
    def check_external(external, batch: int, num_queries: int, num_keys: int):
        """External adjacency as ``[B, Tq, Tk]`` rows of the current queries (or ``None``).

        Accepts a dense ``[B, Tq, Tk]`` / ``[B, Tk, Tk]`` tensor (``E[b, i, j]`` = weight of
        the edge ``j -> i``) or an :class:`~pyg_transformer.graph.AttentionGraph` (COO,
        ``B`` graphs of ``Tk`` nodes).
        """
        if external is None:
            return None
        if isinstance(external, AttentionGraph):
            if external.batch_size != batch or external.seq_len != num_keys:
                raise ValueError(
                    f"external_adjacency graph must have batch_size={batch} and "
                    f"seq_len={num_keys}, got {external.batch_size} and {external.seq_len}"
                )
            external = external.to_dense()
        if not isinstance(external, Tensor) or not external.is_floating_point():
            raise TypeError(
                "external_adjacency must be a floating point tensor [B, T, T] or an "
                f"AttentionGraph, got {type(external).__name__}"
            )
        if external.dim() != 3 or external.size(0) != batch or external.size(2) != num_keys \
                or external.size(1) not in (num_queries, num_keys):
            raise ValueError(
                f"external_adjacency must have shape [B, Tq, Tk] = [{batch}, {num_queries}, "
                f"{num_keys}] or [B, Tk, Tk], got {tuple(external.shape)}"
            )
        if not torch.isfinite(external).all():
            raise ValueError("external_adjacency contains NaN or inf")
        return external[:, external.size(1) - num_queries :]

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        cache=None,
        external_adjacency: Tensor | AttentionGraph | None = None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        """``hidden_states [B, Tq, D]`` -> ``([B, Tq, D], None)``; ``attention_mask`` is
        the 2D ``[B, Tk]`` padding mask (1 = real token) or ``None``;
        ``external_adjacency`` :math:`E` is added to every head's adjacency,
        :math:`A'_h + E`, on causal,
        non-padding pairs (see :meth:`check_external`)."""
        batch, num_queries, _ = hidden_states.shape
        query, key, features, all_features = self.project(
            hidden_states, position_embeddings, cache
        )
        num_keys = key.size(2)
        mask = self.check_mask(attention_mask, batch, num_keys)
        external = self.check_external(external_adjacency, batch, num_queries, num_keys)
        out = self.aggregate_heads(query, key, features, all_features, mask, external)
        out = out.transpose(1, 2).reshape(batch, num_queries, -1)
        if self.o_proj is not None:
            out = self.o_proj(out)
        return out, None

    def aggregate_heads(self, query, key, features, all_features, mask,
                        external=None) -> Tensor:
        """``[B, H, Tq, d]`` head outputs (before concatenation / ``o_proj``)."""
        raise NotImplementedError

    def scaled_query(self, query: Tensor) -> Tensor:
        r"""Queries times :math:`\alpha_l / \sqrt{d}`, so scores are plain dot products."""
        if self.log_alpha is None:
            return query * score_scale(float(self.config.sharpening_init), self.head_dim)
        return query * score_scale(self.alpha, self.head_dim).to(query.dtype)

    def graph(self, query: Tensor, key: Tensor, mask: Tensor | None,
              external: Tensor | None = None) -> AttentionGraph:
        """``B * H`` per-head graphs of the adjacency :math:`A'` (see
        :func:`~pyg_transformer.attention.head_graphs`)."""
        return head_graphs(
            self.scaled_query(query), key, self.adjacency_spec,
            attention_mask=mask, query_offset=key.size(2) - query.size(2), external=external,
        )

    @torch.no_grad()
    def attention_graph(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: Tensor | None = None,
        head: int | None = None,
        external_adjacency: Tensor | AttentionGraph | None = None,
    ) -> AttentionGraph:
        """The adjacency :math:`A'` of the given (normed) layer input as graphs: all heads
        (``B * H`` graphs, graph ``b * H + h``) or one head (``B`` graphs)."""
        query, key, _, _ = self.project(hidden_states, position_embeddings)
        batch, num_keys = hidden_states.size(0), key.size(2)
        mask = self.check_mask(attention_mask, batch, num_keys)
        external = self.check_external(external_adjacency, batch, query.size(2), num_keys)
        if head is not None:
            if isinstance(head, bool) or not isinstance(head, int) or not (
                0 <= head < self.num_heads
            ):
                raise ValueError(f"head must be an int in [0, {self.num_heads}), got {head!r}")
            groups = self.num_heads // self.num_key_value_heads
            query = query[:, head : head + 1]
            key = key[:, head // groups : head // groups + 1]
        return self.graph(query, key, mask, external)
