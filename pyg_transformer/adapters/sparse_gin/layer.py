"""The Sparse-GIN adapter modules: the GNN (:class:`SparseGinGNN`) and the per decoder
layer peft tuner layer (:class:`SparseGinLayer`) holding it and its scale
:math:`\\lambda_l`."""

from __future__ import annotations

import dataclasses
from functools import cached_property

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch_geometric.nn import PNAConv

from pyg_transformer.compat import attn_implementation
from pyg_transformer.graph import (
    AttentionGraph,
    DecodeRow,
    decode_row_graph,
    qk_to_graph,
)
from pyg_transformer.nn import WeightedGINConv, causal_degree_histogram

PNA_AGGREGATORS = ["mean", "min", "max", "std"]
PNA_SCALERS = ["identity", "amplification", "attenuation"]


class SparseGinGNN(nn.Module):
    r"""The GNN of one adapted decoder layer.

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
            rows = DecodeRow.from_coo(edge_index, edge_weight, B, Tk).weight.view(B, 1, Tk)
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
            z = torch.bmm(rows, src).view(B, -1).addcmul_(eps, h)  # eps h_t + sum_j w_tj h_j
            z = F.layer_norm(F.linear(z, w1, b1), ln_shape, ln_weight, ln_bias, ln_eps).relu_()
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


@dataclasses.dataclass(frozen=True)
class GraphOptions:
    """The graph options of one adapter (from its :class:`SparseGinConfig`); hashable, so
    adapters with equal options share one graph per call."""

    head_reduction: str
    sharpen_alpha: float
    sharpen_tau: float
    threshold: float
    top_k: int | None
    detach: bool
    chunk_size: int
    cross_token_edges: bool
    clamp: float = 1.0

    @classmethod
    def from_config(cls, config) -> GraphOptions:
        return cls(head_reduction=config.head_reduction, sharpen_alpha=config.alpha,
                   sharpen_tau=config.tau, threshold=config.epsilon, top_k=config.top_k,
                   detach=config.detach_adjacency, chunk_size=config.chunk_size,
                   cross_token_edges=config.cross_token_edges)

    @cached_property
    def chain(self) -> dict:
        """The keyword arguments of the adjacency chain (:func:`qk_to_graph`)."""
        return dict(head_reduction=self.head_reduction, clamp=self.clamp,
                    sharpen_alpha=self.sharpen_alpha, sharpen_tau=self.sharpen_tau,
                    threshold=self.threshold, top_k=self.top_k)


class FeatureCache:
    r"""Node features of the tokens a KV cache holds, for one adapter of one layer: per GNN
    layer a buffer ``[B, capacity, g]`` whose row ``r`` is absolute position
    ``start + r``; rows ``0 .. length - 1`` are filled. It lives on the
    :class:`~transformers.Cache` object of the call (see :func:`feature_cache`), so it
    follows that cache: a new cache starts empty, a cropped cache reads a prefix, a
    sliding-window cache the last keys, and beam search reorders it with the keys."""

    def __init__(self) -> None:
        self.buffers: list[Tensor] = []
        self.start = 0
        self.length = 0

    def window(self, first: int, stop: int, batch_size: int, layer_idx: int) -> list[Tensor]:
        """Views of absolute positions ``[first, stop)``.

        Raises:
            RuntimeError: the cache holds keys this adapter has no features for (a cache
                filled by another model, or a batch of another size).
        """
        have_end = self.start + self.length
        if stop > first and (not self.buffers or first < self.start or stop > have_end
                             or self.buffers[0].size(0) != batch_size):
            raise RuntimeError(
                f"Sparse-GIN layer {layer_idx}: the KV cache holds positions {first}..{stop - 1} "
                f"but the adapter has node features for "
                f"{'none' if not self.length else f'{self.start}..{have_end - 1}'} (batch "
                f"{self.buffers[0].size(0) if self.buffers else 0}, now {batch_size}); pass "
                "the cache returned by the adapted model")
        return [b[:, first - self.start:stop - self.start] for b in self.buffers]

    def decode_slots(self, first: int, position: int, batch_size: int,
                     layer_idx: int) -> list[Tensor]:
        """Views of positions ``[first, position]``: the cached features plus an empty last
        row for the new token at ``position`` (written by the decode step). Grows or
        compacts the buffers when full."""
        self.window(first, position, batch_size, layer_idx)
        if position - self.start >= self.buffers[0].size(1):
            keep = position - first
            self.buffers = [torch.cat([b[:, first - self.start:position - self.start],
                                       b.new_empty(b.size(0), max(keep, 64) + 1, b.size(2))], 1)
                            for b in self.buffers]
            self.start = first
        self.length = position - self.start + 1
        return [b[:, first - self.start:self.length] for b in self.buffers]

    def replace(self, features: list[Tensor], first: int) -> None:
        """Keep ``features`` ``[B, Tk, g]`` (positions ``first ..``) with room to grow."""
        B, Tk, g = features[0].shape
        self.buffers = []
        for f in features:
            buffer = f.new_empty(B, Tk + max(Tk, 64), g)
            buffer[:, :Tk] = f.detach()
            self.buffers.append(buffer)
        self.start, self.length = first, Tk

    def reorder(self, beam_idx: Tensor) -> None:
        self.buffers = [b.index_select(0, beam_idx.to(b.device)) for b in self.buffers]


FEATURES_ATTRIBUTE = "sparse_gin_features"


def feature_cache(cache, layer_idx: int, adapter_name: str) -> FeatureCache:
    """The :class:`FeatureCache` of ``(layer_idx, adapter_name)`` kept on ``cache`` (a
    :class:`transformers.Cache`); the first one also makes ``cache.reorder_cache`` (beam
    search) reorder the node features with the keys."""
    stores = cache.__dict__.get(FEATURES_ATTRIBUTE)
    if stores is None:
        stores = cache.__dict__[FEATURES_ATTRIBUTE] = {}
        reorder_keys = cache.reorder_cache

        def reorder_cache(beam_idx: Tensor) -> None:
            reorder_keys(beam_idx)
            for store in stores.values():
                store.reorder(beam_idx)

        cache.reorder_cache = reorder_cache
    store = stores.get((layer_idx, adapter_name))
    if store is None:
        store = stores[layer_idx, adapter_name] = FeatureCache()
    return store


def mask_visibility(mask: Tensor | None, batch_size: int, num_queries: int,
                    num_keys: int) -> tuple[Tensor | None, Tensor | None]:
    """``(padding [B, Tk], visible [B, Tq, Tk])`` from the mask an attention function
    receives: ``None``/``None`` for none (plain causal), a 2-D padding mask as is, a
    boolean or additive 4-D mask ``[B, 1, Tq, Tk]`` as the keys each query sees (causal,
    padding and sliding window in one). A key no query sees counts as padding; ``padding``
    is ``None`` when every key is seen."""
    if mask is None:
        return None, None
    if mask.dim() == 2:
        return mask.bool(), None
    if mask.dim() != 4 or mask.shape[-2:] != (num_queries, num_keys):
        raise ValueError(
            f"Sparse-GIN expects the attention mask [B, 1, Tq, Tk] = [{batch_size}, 1, "
            f"{num_queries}, {num_keys}] or [B, Tk], got {tuple(mask.shape)}")
    visible = mask[:, 0]
    if visible.dtype != torch.bool:
        visible = visible > torch.finfo(visible.dtype).min / 2
    visible = visible.expand(batch_size, num_queries, num_keys)
    padding = visible.any(dim=1)
    return (None if bool(padding.all()) else padding), visible


def _self_loops_only(graph: AttentionGraph | DecodeRow) -> AttentionGraph | DecodeRow:
    """``graph`` without its edges between two different tokens (``cross_token_edges=False``)."""
    if isinstance(graph, DecodeRow):
        weight = torch.zeros_like(graph.weight)
        weight[:, -1] = graph.weight[:, -1]
        return DecodeRow(weight)
    keep = graph.edge_index[0] == graph.edge_index[1]
    return dataclasses.replace(graph, edge_index=graph.edge_index[:, keep],
                               edge_weight=graph.edge_weight[keep])


def refuse_merge() -> None:
    """Raise the ``ValueError`` of every merge request."""
    raise ValueError("a Sparse-GIN adapter cannot be merged into the base weights (a GNN over "
                     "the attention graph is not a weight update); use unload() or "
                     "disable_adapter() instead")


class SparseGinLayer(nn.Module, BaseTunerLayer):
    r"""The adapter of one decoder layer: :math:`\Delta = \lambda_l\,\operatorname{RMSNorm}(
    \operatorname{GNN}(X, A'))`, added to the attention output :math:`O` so that the
    decoder's residual add yields :math:`X + \Delta` with :math:`X = R + O`.

    A child (``sparse_gin``) of the decoder layer it adapts; it replaces nothing. Its
    forward hooks, methods of this module (so that a deep copy is wired to the copy):
    a pre-hook on the layer's input norm records the layer input :math:`R`, the
    ``"sparse_gin_*"`` attention function calls :meth:`capture` with the layer's post-RoPE
    queries and keys and the call's mask, and a hook on the attention block
    (:meth:`merge`) adds :math:`\Delta`. Per adapter name it holds a
    :class:`SparseGinGNN` (``sparse_gin_gnn``), the scalar :math:`\lambda_l`
    (``sparse_gin_lambda``) and the graph options (``sparse_gin_options``); the active
    adapters (peft's ``set_adapter``) run, their outputs summed.
    """

    adapter_layer_names = ("sparse_gin_gnn", "sparse_gin_lambda")
    other_param_names = ("sparse_gin_options",)

    def __init__(self, layer_idx: int, hidden_size: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = hidden_size
        self.sparse_gin_gnn = nn.ModuleDict()
        self.sparse_gin_lambda = nn.ParameterDict()
        self.sparse_gin_options: dict[str, GraphOptions] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.frozen_peft_weight_names = {}
        self._handles: list = []
        # per call: the layer input and the graphs of the active adapters
        self._residual: Tensor | None = None
        self._graphs: dict[str, AttentionGraph | DecodeRow] | None = None
        self._last_graph: AttentionGraph | DecodeRow | None = None
        # adapters created but neither run nor loaded yet (a failed load may remove them)
        self.fresh_adapters: set[str] = set()

    # -- adapters ------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, scale: float, max_seq_len: int) -> None:
        """Create the adapter ``adapter_name`` from a :class:`SparseGinConfig`."""
        deg = None
        if config.gnn_type == "pna":
            deg = causal_degree_histogram(max_seq_len, config.top_k)
        param = next(iter(self.parameters()), None)
        gnn = SparseGinGNN(self.hidden_size, config.hidden_dim, num_layers=config.num_gnn_layers,
                           gnn_type=config.gnn_type, dropout=config.dropout, deg=deg)
        self.sparse_gin_gnn[adapter_name] = gnn if param is None else gnn.to(param.device)
        self.sparse_gin_lambda[adapter_name] = nn.Parameter(
            torch.tensor(float(scale), device=None if param is None else param.device))
        self.fresh_adapters.add(adapter_name)
        self.sparse_gin_options[adapter_name] = GraphOptions.from_config(config)
        if not config.trainable_scale:
            self.frozen_peft_weight_names = {**self.frozen_peft_weight_names,
                                             adapter_name: ("sparse_gin_lambda",)}
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        """Not available: a GNN over the attention graph has no weight-space form.

        Raises:
            ValueError: always.
        """
        refuse_merge()

    def unmerge(self) -> None:
        refuse_merge()

    # -- hooks ---------------------------------------------------------------------------
    def attach(self, reader: nn.Module, attention: nn.Module) -> None:
        """Register the hooks: ``reader`` (the module that first reads the layer input,
        its input norm) and ``attention`` (the attention block)."""
        self._handles = [
            reader.register_forward_pre_hook(self.record_residual, with_kwargs=True),
            attention.register_forward_hook(self.merge_output, with_kwargs=True),
        ]

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def record_residual(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the input norm: remember the layer input :math:`R`."""
        self._residual = args[0] if args else kwargs["hidden_states"]

    def _running(self) -> list[str]:
        if self.disable_adapters:
            return []
        return [a for a in self.active_adapters if a in self.sparse_gin_gnn]

    def capture(self, query: Tensor, key: Tensor, attention_mask: Tensor | None, *,
                scaling: float | None = None, external: Tensor | None = None) -> None:
        """Build the graph of every running adapter from this call's post-RoPE ``query``
        ``[B, H, Tq, d]``, ``key`` ``[B, Hkv, Tk, d]`` and attention mask (called by the
        attention function).

        Raises:
            ValueError: ``external`` does not cover the keys (not with a KV cache).
        """
        running = self._running()
        if not running:
            self._graphs = None
            return
        B, _, Tq, d = query.shape
        Tk = key.size(2)
        padding, visible = mask_visibility(attention_mask, B, Tq, Tk)
        scaling = scaling or d ** -0.5
        if external is not None:
            if external.size(-1) != Tk:
                raise ValueError(
                    f"external_adjacency covers {external.size(-1)} positions but attention has "
                    f"{Tk} keys (external adjacency is not supported with a KV cache)")
            external = external[:, Tk - Tq:]
        graphs: dict[str, AttentionGraph | DecodeRow] = {}
        built: dict[GraphOptions, AttentionGraph | DecodeRow] = {}
        for adapter in running:
            options = self.sparse_gin_options[adapter]
            if options not in built:
                built[options] = self._build_graph(query, key, scaling, padding, visible,
                                                   external, options)
            graphs[adapter] = built[options]
        self._graphs = graphs

    @staticmethod
    def _build_graph(query: Tensor, key: Tensor, scaling: float, padding: Tensor | None,
                     visible: Tensor | None, external: Tensor | None,
                     options: GraphOptions) -> AttentionGraph | DecodeRow:
        Tq, Tk = query.size(2), key.size(2)
        if Tq == 1 and external is None and (options.detach or not torch.is_grad_enabled()):
            row = padding if visible is None else visible[:, 0]
            if row is not None and bool(row.all()):
                row = None
            graph = decode_row_graph(query, key, scaling=scaling, padding=row, **options.chain)
        else:
            graph = qk_to_graph(query, key, scaling=scaling, attention_mask=padding,
                                visible=visible, chunk_size=options.chunk_size,
                                query_offset=Tk - Tq, detach=options.detach,
                                external=external, **options.chain)
        return graph if options.cross_token_edges else _self_loops_only(graph)

    def merge_output(self, module: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook of the attention block: its output :math:`O` becomes
        :math:`O + \\sum_a \\lambda_a \\operatorname{RMSNorm}(\\operatorname{GNN}_a(R + O, A'_a))`.

        Raises:
            RuntimeError: the attention did not run through the Sparse-GIN attention
                function.
        """
        graphs, self._graphs = self._graphs, None
        residual, self._residual = self._residual, None
        running = self._running()
        if not running:
            return None
        if graphs is None or residual is None:
            config = getattr(module, "config", None)
            implementation = None if config is None else attn_implementation(config)
            raise RuntimeError(
                f"Sparse-GIN layer {self.layer_idx}: the attention did not run through the "
                f"Sparse-GIN attention function (the model's attention implementation is "
                f"{implementation!r}; it was changed after attaching the adapter)")
        self.fresh_adapters.difference_update(running)
        attn_out = output[0] if isinstance(output, tuple) else output
        x = residual + attn_out
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        merged = attn_out
        for adapter in running:
            out = self._gnn_output(adapter, x, graphs[adapter], cache)
            # O + lambda_a * GNN_a(...), one fused op
            merged = merged.addcmul(self.sparse_gin_lambda[adapter].to(merged.dtype),
                                    out if out.dtype == merged.dtype else out.to(merged.dtype))
        graph = graphs[running[0]]
        self._last_graph = graph if isinstance(graph, DecodeRow) else graph.detached()
        if isinstance(output, tuple):
            return (merged,) + output[1:]
        return merged

    def _gnn_output(self, adapter: str, x: Tensor, graph: AttentionGraph | DecodeRow,
                    cache) -> Tensor:
        r""":math:`\operatorname{RMSNorm}(\operatorname{GNN}(x, A'))` of ``adapter`` (before
        :math:`\lambda`), reading and updating its node features on ``cache``."""
        gnn = self.sparse_gin_gnn[adapter]
        B, Tq = x.size(0), x.size(1)
        Tk = graph.seq_len
        num_past = Tk - Tq
        store = first = None
        if cache is not None:
            store = feature_cache(cache, self.layer_idx, adapter)
            end = cache.get_seq_length(self.layer_idx)
            first = end - Tk
            if first < 0:
                raise ValueError(
                    f"Sparse-GIN layer {self.layer_idx}: the cache returned {Tk} keys for "
                    f"{end} tokens ({type(cache).__name__} with fixed-size layers is not "
                    "supported; use a DynamicCache)")
        elif num_past:
            raise RuntimeError(f"Sparse-GIN layer {self.layer_idx}: {num_past} past keys but "
                               "no KV cache in the call")
        dtype = gnn.lin_in.weight.dtype
        xin = x if x.dtype == dtype else x.to(dtype)
        if isinstance(graph, DecodeRow) and (gnn.gnn_type != "gin" or not num_past):
            graph = graph.to_graph()
        if num_past and Tq == 1 and gnn.gnn_type == "gin":
            if not isinstance(graph, DecodeRow):
                graph = DecodeRow.from_coo(graph.edge_index, graph.edge_weight, B, Tk)
            rows = graph.weight.view(B, 1, -1)
            features = store.decode_slots(first, first + num_past, B, self.layer_idx)
            out = gnn._decode_step(xin, rows, features)
        else:
            past = store.window(first, first + num_past, B, self.layer_idx) if num_past else None
            out, features = gnn(xin, graph.edge_index, graph.edge_weight, past)
            if store is not None:
                store.replace(features, first)
        return out

    def forward(self, x: Tensor, graph: AttentionGraph | DecodeRow,
                adapter_name: str | None = None) -> Tensor:
        r""":math:`\lambda \operatorname{RMSNorm}(\operatorname{GNN}(x, A'))` of one adapter
        (default: the first active one) on a given graph without cached positions.

        Shapes:
            ``x`` ``[B, T, D]``, ``graph`` over ``B * T`` nodes -> ``[B, T, D]``.
        """
        adapter = adapter_name or self.active_adapters[0]
        out = self.sparse_gin_lambda[adapter] * self._gnn_output(adapter, x, graph, cache=None)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @property
    def last_graph(self) -> AttentionGraph | None:
        """The graph of the first active adapter in the last forward."""
        graph = self._last_graph
        if isinstance(graph, DecodeRow):
            graph = self._last_graph = graph.to_graph()
        return graph

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(layer_idx={self.layer_idx}, "
                f"adapters={list(self.sparse_gin_gnn)})")
