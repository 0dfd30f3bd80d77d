"""The Sparse-GIN adapter modules: the GNN (:class:`SparseGinGNN`) and the per decoder
layer peft tuner layer (:class:`SparseGinLayer`) holding it and its scale
:math:`\\lambda_l`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch_geometric.nn import PNAConv

from pyg_transformer.graph import AttentionGraph
from pyg_transformer.nn import WeightedGINConv, causal_degree_histogram

PNA_AGGREGATORS = ["mean", "min", "max", "std"]
PNA_SCALERS = ["identity", "amplification", "attenuation"]


class SparseGinGNN(nn.Module):
    r"""The GNN of one adapted decoder layer (SPEC §4).

    .. math::
        H_0 = \operatorname{Linear_{in}}(X), \qquad
        H_{k+1} = \operatorname{MLP}_k\Bigl(\epsilon_k H_{k,i}
        + \sum_{j \to i} w_{ji} H_{k,j}\Bigr) + \operatorname{Linear_{res,k}}(H_k)

    .. math::
        \operatorname{MLP}(z) = \operatorname{Linear_2}(\operatorname{Dropout}(
        \operatorname{ReLU}(\operatorname{LayerNorm}(\operatorname{Linear_1}(z)))))
        , \qquad Y = \operatorname{RMSNorm}(\operatorname{Linear_{out}}(H_n))

    With ``gnn_type="pna"`` the bracket is a :class:`torch_geometric.nn.PNAConv`
    (aggregators mean/min/max/std, scalers identity/amplification/attenuation, the edge
    weight :math:`w_{ji}` as a 1-dim ``edge_attr``).

    Args:
        in_channels: model hidden size :math:`D`.
        hidden_channels: adapter hidden size :math:`g`.
        num_layers: number of GNN layers :math:`n`.
        gnn_type: ``"gin"`` or ``"pna"``.
        dropout: dropout probability inside the MLPs.
        deg: in-degree histogram for :class:`~torch_geometric.nn.PNAConv` (``"pna"`` only).

    A single-row KV-cache decode step (``gnn_type="gin"``) takes a functional fast path
    (:meth:`_decode_step`) with the same math.

    Shapes:
        - **input:** ``x`` ``[B, Tq, D]``; graph edges over ``B * Tk`` nodes whose
          targets are the last ``Tq`` positions of each sequence; ``past`` a list of
          ``n`` tensors ``[B, Tk - Tq, g]`` (cached node features) or ``None``
        - **output:** ``[B, Tq, D]`` and the ``n`` node-feature tensors ``[B, Tk, g]``
          of all positions (cached ones first), to cache
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int = 1,
        gnn_type: str = "gin",
        dropout: float = 0.0,
        deg: Tensor | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.gnn_type = gnn_type
        g = hidden_channels
        self.lin_in = nn.Linear(in_channels, g)
        self.convs = nn.ModuleList()
        self.lins_res = nn.ModuleList()
        for _ in range(num_layers):
            if gnn_type == "gin":
                mlp = nn.Sequential(
                    nn.Linear(g, g), nn.LayerNorm(g), nn.ReLU(), nn.Dropout(dropout), nn.Linear(g, g)
                )
                conv = WeightedGINConv(mlp, eps=0.0, train_eps=True)
            elif gnn_type == "pna":
                if deg is None:
                    raise ValueError("gnn_type='pna' needs a degree histogram `deg`")
                conv = PNAConv(g, g, PNA_AGGREGATORS, PNA_SCALERS, deg=deg, edge_dim=1)
            else:
                raise ValueError(f"gnn_type must be 'gin' or 'pna', got {gnn_type!r}")
            self.convs.append(conv)
            self.lins_res.append(nn.Linear(g, g))
        self.dropout = nn.Dropout(dropout) if gnn_type == "pna" else nn.Identity()
        self.lin_out = nn.Linear(g, in_channels)
        self.norm = nn.RMSNorm(in_channels, eps=1e-6)
        # the tensors and constants the decode step reads, gathered once (see _decode_plan)
        self._plan: tuple | None = None
        self.register_load_state_dict_post_hook(SparseGinGNN._drop_plan)

    @staticmethod
    def _drop_plan(module: SparseGinGNN, incompatible_keys=None) -> None:
        module._plan = None

    def _apply(self, fn, recurse=True):
        self._plan = None  # .to() / .half() / ... may replace the parameters
        return super()._apply(fn, recurse)

    def _decode_plan(self) -> tuple:
        """References to the parameters used by :meth:`_decode_step` (module attribute
        look-ups cost about as much as the tiny ops of a decode step). Rebuilt after
        ``_apply`` (``.to()``, ...) and ``load_state_dict``."""
        if self._plan is None:
            layers = []
            for conv, lin_res in zip(self.convs, self.lins_res):
                lin1, norm, _, dropout, lin2 = conv.nn
                layers.append((
                    conv.eps, lin1.weight, lin1.bias, norm.normalized_shape, norm.weight,
                    norm.bias, norm.eps, dropout, lin2.weight, lin2.bias, lin_res.weight,
                    lin_res.bias,
                ))
            self._plan = (
                self.lin_in.weight, self.lin_in.bias, tuple(layers), self.lin_out.weight,
                self.lin_out.bias, self.norm.normalized_shape, self.norm.weight, self.norm.eps,
            )
        return self._plan

    def reset_parameters(self) -> None:
        self.lin_in.reset_parameters()
        for conv, lin in zip(self.convs, self.lins_res):
            conv.reset_parameters()
            lin.reset_parameters()
        self.lin_out.reset_parameters()
        self.norm.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor,
        past: list[Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        B, Tq, _ = x.shape
        P = 0 if past is None else past[0].size(1)
        Tk = P + Tq
        if P > 0 and Tq == 1 and self.gnn_type == "gin":
            rows = edge_weight.new_zeros(B * Tk).index_put_(
                (edge_index[0],), edge_weight, accumulate=True
            ).view(B, 1, Tk)
            features = [torch.cat([p.to(x.dtype), p.new_empty(B, 1, p.size(2))], dim=1)
                        for p in past]
            return self._decode_step(x, rows, features), features
        h = self.lin_in(x)
        if P:  # bipartite: sources are all Tk positions, targets the last Tq
            target = edge_index[1]
            target = (target // Tk) * Tq + target % Tk - P
            bipartite_index = torch.stack([edge_index[0], target])
        features = []
        for k, (conv, lin_res) in enumerate(zip(self.convs, self.lins_res)):
            flat = h.reshape(B * Tq, -1)
            if P:
                full = torch.cat([past[k].to(h.dtype), h], dim=1)
                features.append(full)
                src = full.reshape(B * Tk, -1)
            else:
                features.append(h)
            if self.gnn_type == "gin":
                if P:
                    out = conv((src, flat), bipartite_index, edge_weight, size=(B * Tk, B * Tq))
                else:
                    out = conv(flat, edge_index, edge_weight)
            else:
                attr = edge_weight.view(-1, 1).to(h.dtype)
                out = conv(src if P else flat, edge_index, attr)
                if P:
                    out = out.view(B, Tk, -1)[:, P:].reshape(B * Tq, -1)
                out = self.dropout(out)
            h = out.view(B, Tq, -1) + lin_res(h)
        out = self.lin_out(h)
        return self.norm(out.to(self.norm.weight.dtype)), features

    def _decode_step(self, x: Tensor, rows: Tensor, features: list[Tensor]) -> Tensor:
        """GIN forward of one new token per sequence (a KV-cache decode step).

        The same math as :meth:`forward`, with the new adjacency row aggregated by one
        dense product ``rows @ features[k]`` (``rows`` ``[B, 1, Tk]``: the kept edge
        weights of the new row, 0 elsewhere) and the layers called functionally: at batch
        size 1 the per-call overhead of the small modules dominates a decode step.
        ``features[k]`` ``[B, Tk, g]`` holds the cached node features of layer ``k`` in
        its first ``Tk - 1`` rows; the new token's features are written into its last row.
        """
        w_in, b_in, layers, w_out, b_out, norm_shape, norm_weight, norm_eps = self._decode_plan()
        B = x.size(0)
        h = F.linear(x.view(B, -1), w_in, b_in)
        dtype = h.dtype
        if rows.dtype != dtype:
            rows = rows.to(dtype)
        for src, (eps, w1, b1, ln_shape, ln_weight, ln_bias, ln_eps, dropout, w2, b2, w_res,
                  b_res) in zip(features, layers):
            src.select(1, src.size(1) - 1).copy_(h)
            if eps.dtype != dtype:
                eps = eps.to(dtype)
            z = torch.bmm(rows, src).view(B, -1) + eps * h
            z = F.relu(F.layer_norm(F.linear(z, w1, b1), ln_shape, ln_weight, ln_bias, ln_eps))
            if dropout.training and dropout.p > 0:
                z = F.dropout(z, dropout.p, True)
            h = F.linear(z, w2, b2) + F.linear(h, w_res, b_res)
        out = F.linear(h, w_out, b_out)
        if out.dtype != norm_weight.dtype:
            out = out.to(norm_weight.dtype)
        out = F.rms_norm(out, norm_shape, norm_weight, norm_eps)
        return out.view(B, 1, -1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
            f"num_layers={len(self.convs)}, gnn_type={self.gnn_type!r})"
        )


class DecodeRow:
    r"""The adjacency of a single-query KV-cache decode step, kept dense: ``weight``
    ``[B, Tk]`` holds the edge weight :math:`A'_{t,j}` of every kept edge ``j -> t``
    (``t = Tk - 1``, the new token) and 0 elsewhere (kept weights are sigmoids above
    :math:`\varepsilon \ge 0`, hence > 0). The :class:`AttentionGraph` is built from it
    only when asked for (:meth:`to_graph`)."""

    __slots__ = ("weight",)

    def __init__(self, weight: Tensor):
        self.weight = weight

    @property
    def seq_len(self) -> int:
        return self.weight.size(1)

    def to_graph(self) -> AttentionGraph:
        """The equivalent :class:`AttentionGraph` (edges in ``(batch, key)`` order)."""
        B, Tk = self.weight.shape
        flat = self.weight.reshape(-1)
        source = flat.nonzero().view(-1)
        target = source - source % Tk + (Tk - 1)
        return AttentionGraph(
            edge_index=torch.stack([source, target]), edge_weight=flat[source],
            batch=torch.arange(B, device=flat.device).repeat_interleave(Tk),
            num_nodes=B * Tk, batch_size=B, seq_len=Tk, query_offset=Tk - 1,
        )


class SparseGinLayer(nn.Module, BaseTunerLayer):
    r"""The adapter of one decoder layer: :math:`\Delta = \lambda_l\,\operatorname{GNN}(X, A')`,
    added to the attention output so that the decoder's residual add yields
    :math:`X + \lambda_l\,\operatorname{RMSNorm}(\operatorname{GNN}(X, A'))`.

    It wraps no base module (the base model is left untouched; hooks call it). Per
    adapter name it holds a :class:`SparseGinGNN` (``sparse_gin_gnn``) and a scalar
    :math:`\lambda_l` (``sparse_gin_lambda``). Between calls it keeps the graph of the
    last forward (:attr:`last_graph`) and, while generating with a KV cache, the node
    features of past tokens.
    """

    adapter_layer_names = ("sparse_gin_gnn", "sparse_gin_lambda")

    def __init__(self, layer_idx: int, hidden_size: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = hidden_size
        self.sparse_gin_gnn = nn.ModuleDict()
        self.sparse_gin_lambda = nn.ParameterDict()
        self._disable_adapters = False
        self.merged_adapters = []
        self._last_graph: AttentionGraph | DecodeRow | None = None
        # node features of cached tokens: one [B, capacity, g] buffer per GNN layer,
        # of which the first ``_num_cached`` positions are filled
        self._feature_buffers: list[Tensor] | None = None
        self._num_cached = 0

    @property
    def last_graph(self) -> AttentionGraph | None:
        """The graph of the last forward (built on first access after a decode step)."""
        graph = self._last_graph
        if isinstance(graph, DecodeRow):
            graph = self._last_graph = graph.to_graph()
        return graph

    @last_graph.setter
    def last_graph(self, graph: AttentionGraph | DecodeRow | None) -> None:
        self._last_graph = graph

    @property
    def past_features(self) -> list[Tensor] | None:
        """Cached node features ``[B, num_cached, g]`` per GNN layer (KV-cache companion)."""
        if self._feature_buffers is None:
            return None
        return [b[:, :self._num_cached] for b in self._feature_buffers]

    def update_layer(self, adapter_name: str, config, scale: float, max_seq_len: int) -> None:
        """Create the adapter ``adapter_name`` from a :class:`SparseGinConfig`."""
        deg = None
        if config.gnn_type == "pna":
            deg = causal_degree_histogram(max_seq_len, config.top_k)
        self.sparse_gin_gnn[adapter_name] = SparseGinGNN(
            self.hidden_size,
            config.hidden_dim,
            num_layers=config.num_gnn_layers,
            gnn_type=config.gnn_type,
            dropout=config.dropout,
            deg=deg,
        )
        self.sparse_gin_lambda[adapter_name] = nn.Parameter(
            torch.tensor(float(scale)), requires_grad=config.trainable_scale
        )
        self._active_adapter = adapter_name

    def enable_adapters(self, enabled: bool) -> None:
        """Switch the adapter on or off (``requires_grad`` flags are left unchanged)."""
        self._disable_adapters = not enabled

    def reset_cache(self) -> None:
        self._feature_buffers = None
        self._num_cached = 0

    def _store(self, features: list[Tensor]) -> None:
        """Keep ``features`` ``[B, Tk, g]`` with room for later decode steps."""
        B, Tk, g = features[0].shape
        capacity = Tk + max(Tk, 64)
        buffers = []
        for f in features:
            buf = f.new_empty(B, capacity, g)
            buf[:, :Tk] = f.detach()
            buffers.append(buf)
        self._feature_buffers, self._num_cached = buffers, Tk

    def _check_past(self, num_past: int, batch_size: int) -> None:
        have = self._num_cached if self._feature_buffers is not None else 0
        if have < num_past or (num_past and self._feature_buffers[0].size(0) != batch_size):
            raise RuntimeError(
                f"Sparse-GIN layer {self.layer_idx}: the KV cache holds {num_past} past "
                f"tokens but the adapter cached features of {have}; pass the cache returned "
                "by the adapted model"
            )

    def forward(self, x: Tensor, graph: AttentionGraph | DecodeRow,
                store_features: bool = False) -> Tensor:
        """``lambda * RMSNorm(GNN(x, graph))`` for the query positions.

        Args:
            x: residual stream after attention ``[B, Tq, D]``.
            graph: the layer's :class:`AttentionGraph` over ``B * Tk`` nodes
                (``Tk - Tq`` cached positions first), or the :class:`DecodeRow` of a
                single-query decode step.
            store_features: append this call's node features to the KV-cache
                companion (generation).
        """
        adapter = self.active_adapters[0]
        gnn = self.sparse_gin_gnn[adapter]
        B, Tq = x.size(0), x.size(1)
        num_past = graph.seq_len - Tq
        if num_past:
            self._check_past(num_past, B)  # a cropped KV cache keeps a prefix
        dtype = gnn.lin_in.weight.dtype
        if isinstance(graph, DecodeRow) and (gnn.gnn_type != "gin" or not num_past):
            graph = graph.to_graph()
        if num_past and Tq == 1 and gnn.gnn_type == "gin":
            if isinstance(graph, DecodeRow):
                rows = graph.weight.view(B, 1, -1)
            else:
                rows = graph.edge_weight.new_zeros(B * (num_past + 1)).index_put_(
                    (graph.edge_index[0],), graph.edge_weight, accumulate=True
                ).view(B, 1, -1)
            if store_features:
                if self._feature_buffers[0].size(1) <= num_past:  # grow the buffers
                    self._feature_buffers = [
                        torch.cat([b[:, :num_past], torch.empty_like(b[:, :num_past])], 1)
                        for b in self._feature_buffers
                    ]
                features = [b[:, :num_past + 1] for b in self._feature_buffers]
                self._num_cached = num_past + 1
            else:
                features = [torch.cat([b[:, :num_past], b.new_empty(B, 1, b.size(2))], 1)
                            for b in self._feature_buffers]
            out = gnn._decode_step(x if x.dtype == dtype else x.to(dtype), rows, features)
        else:
            past = None if num_past == 0 else [b[:, :num_past] for b in self._feature_buffers]
            out, features = gnn(x.to(dtype), graph.edge_index, graph.edge_weight, past)
            if store_features:
                self._store(features)
        out = self.sparse_gin_lambda[adapter] * out
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(layer_idx={self.layer_idx}, adapters={list(self.sparse_gin_gnn)})"
