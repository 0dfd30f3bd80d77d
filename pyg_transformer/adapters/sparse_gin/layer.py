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
        dense_step = P > 0 and Tq == 1 and self.gnn_type == "gin"
        if dense_step:
            return self._decode_step(x, edge_index, edge_weight, past)
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

    def _decode_step(
        self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, past: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """GIN forward of one new token per sequence (a KV-cache decode step).

        The same math as :meth:`forward`, with the new adjacency row aggregated by one
        dense ``[B, 1, Tk] x [B, Tk, g]`` product (entry ``(b, j)`` sits at the flat
        source id ``b * Tk + j``) and the layers called functionally: at batch size 1
        the per-call overhead of the small modules dominates a decode step.
        """
        B = x.size(0)
        Tk = past[0].size(1) + 1
        h = F.linear(x.view(B, -1), self.lin_in.weight, self.lin_in.bias)
        rows = edge_weight.new_zeros(B * Tk).index_put_(
            (edge_index[0],), edge_weight, accumulate=True
        ).view(B, 1, Tk).to(h.dtype)
        features = []
        for k, (conv, lin_res) in enumerate(zip(self.convs, self.lins_res)):
            src = torch.cat([past[k].to(h.dtype), h.view(B, 1, -1)], dim=1)
            features.append(src)
            z = torch.bmm(rows, src).view(B, -1) + conv.eps.to(h.dtype) * h
            lin1, norm, _, dropout, lin2 = conv.nn
            z = F.layer_norm(F.linear(z, lin1.weight, lin1.bias), norm.normalized_shape,
                             norm.weight, norm.bias, norm.eps)
            z = F.dropout(F.relu(z), dropout.p, dropout.training)
            h = F.linear(z, lin2.weight, lin2.bias) + F.linear(h, lin_res.weight, lin_res.bias)
        out = F.linear(h, self.lin_out.weight, self.lin_out.bias).to(self.norm.weight.dtype)
        out = F.rms_norm(out, self.norm.normalized_shape, self.norm.weight, self.norm.eps)
        return out.view(B, 1, -1), features

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
            f"num_layers={len(self.convs)}, gnn_type={self.gnn_type!r})"
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
        self.last_graph: AttentionGraph | None = None
        self.past_features: list[Tensor] | None = None

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
        self.past_features = None

    def forward(self, x: Tensor, graph: AttentionGraph, store_features: bool = False) -> Tensor:
        """``lambda * RMSNorm(GNN(x, graph))`` for the query positions.

        Args:
            x: residual stream after attention ``[B, Tq, D]``.
            graph: the layer's :class:`AttentionGraph` over ``B * Tk`` nodes
                (``Tk - Tq`` cached positions first).
            store_features: append this call's node features to the KV-cache
                companion (generation).
        """
        adapter = self.active_adapters[0]
        gnn = self.sparse_gin_gnn[adapter]
        past = self.past_features
        num_past = graph.seq_len - x.size(1)
        if num_past == 0:
            past = None
        elif past is not None and past[0].size(1) > num_past:  # the KV cache was cropped
            past = [p[:, :num_past] for p in past]
        if num_past and (past is None or past[0].size(1) != num_past
                         or past[0].size(0) != x.size(0)):
            have = 0 if past is None else past[0].size(1)
            raise RuntimeError(
                f"Sparse-GIN layer {self.layer_idx}: the KV cache holds {num_past} past "
                f"tokens but the adapter cached features of {have}; pass the cache returned "
                "by the adapted model"
            )
        dtype = gnn.lin_in.weight.dtype
        out, features = gnn(x.to(dtype), graph.edge_index, graph.edge_weight, past)
        if store_features:
            self.past_features = [f.detach() for f in features]
        scale = self.sparse_gin_lambda[adapter]
        return (scale * out).to(x.dtype)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(layer_idx={self.layer_idx}, adapters={list(self.sparse_gin_gnn)})"
