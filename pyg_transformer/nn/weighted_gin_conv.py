"""GIN convolution with edge weights, the message passing of GIN-Attention."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn import GINConv
from torch_geometric.typing import Adj, OptPairTensor, OptTensor, Size, SparseTensor
from torch_geometric.utils import spmm

from pyg_transformer.nn.spmm import weighted_spmm


class WeightedGINConv(GINConv):
    r"""The graph isomorphism operator with weighted edges (the aggregation of GIN-Attention
    and of the Sparse-GIN adapter).

    .. math::
        \mathbf{x}^{\prime}_i = h_{\mathbf{\Theta}} \Bigl( \epsilon \cdot
        \mathbf{x}_i + \sum_{j \in \mathcal{N}(i)} w_{j,i} \, \mathbf{x}_j \Bigr)

    or, with ``one_plus_eps=True``, PyG's classic :math:`(1 + \epsilon)\,\mathbf{x}_i`.
    The default drops the ``1`` because a transformer's residual connection already adds
    :math:`\mathbf{x}_i`. With ``edge_weight=None`` every :math:`w_{j,i} = 1` and the
    layer (with ``one_plus_eps=True``) is exactly :class:`torch_geometric.nn.GINConv`.

    Args:
        nn: the network :math:`h_{\mathbf{\Theta}}` mapping ``[-1, F_in]`` to
            ``[-1, F_out]``.
        eps: (initial) :math:`\epsilon`.
        train_eps: make :math:`\epsilon` a trainable parameter.
        one_plus_eps: use :math:`(1 + \epsilon)` instead of :math:`\epsilon`.
        **kwargs: arguments of :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features ``(|V|, F_in)`` (or a bipartite pair), edge indices
          ``(2, |E|)`` (row 0 source, row 1 target) or a sparse ``adj_t`` whose values
          are the weights, edge weights ``(|E|)`` *(optional)*
        - **output:** node features ``(|V|, F_out)`` (``|V_t|`` if bipartite)

    An :class:`torch_geometric.EdgeIndex` sorted by target (``sort_order="col"``, no
    duplicate edges) takes PyG's fused path: one CSR sparse-dense product
    (:func:`~pyg_transformer.nn.spmm.weighted_spmm`, gradients for the weights too)
    instead of gathering an ``[E, F]`` message tensor.
    """

    SUPPORTS_FUSED_EDGE_INDEX = True

    def __init__(
        self,
        nn: Callable,
        eps: float = 0.0,
        train_eps: bool = False,
        one_plus_eps: bool = False,
        **kwargs,
    ):
        super().__init__(nn, eps=eps, train_eps=train_eps, **kwargs)
        self.one_plus_eps = one_plus_eps

    def forward(
        self,
        x: Tensor | OptPairTensor,
        edge_index: Adj,
        edge_weight: OptTensor = None,
        size: Size = None,
    ) -> Tensor:
        if isinstance(x, Tensor):
            x = (x, x)
        # PyG reads the first `propagate_type` comment along the MRO: declare ours, or
        # GINConv's (x only) is used and edge_weight is rejected.
        # propagate_type: (x: OptPairTensor, edge_weight: OptTensor)
        out = self.propagate(edge_index, x=x, edge_weight=edge_weight, size=size)
        x_r = x[1]
        if x_r is not None:
            scale = 1 + self.eps if self.one_plus_eps else self.eps
            out = out + scale.to(x_r.dtype) * x_r
        return self.nn(out)

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, edge_index: Adj, x: OptPairTensor,
                              edge_weight: OptTensor) -> Tensor:
        if not torch.jit.is_scripting() and isinstance(edge_index, EdgeIndex):
            if self.aggr in ("add", "sum"):
                weight = edge_weight if edge_weight is not None else x[0].new_ones(
                    edge_index.size(1))
                return weighted_spmm(edge_index.as_tensor(), weight, x[0],
                                     edge_index.get_sparse_size(1))
            return edge_index.matmul(x[0], input_value=edge_weight, reduce=self.aggr,
                                     transpose=True)
        # unlike GINConv, keep the sparse values: they are the edge weights
        if isinstance(edge_index, SparseTensor) and edge_index.storage.value() is not None:
            edge_index = edge_index.set_value(
                edge_index.storage.value().to(x[0].dtype), layout=None
            )
        return spmm(edge_index, x[0], reduce=self.aggr)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(nn={self.nn}, one_plus_eps={self.one_plus_eps})"
        )
