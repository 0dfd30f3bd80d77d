"""The batched causal attention graph in PyG's COO layout."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data


@dataclass
class AttentionGraph:
    r"""A batch of ``B`` causal attention graphs as one PyG graph of ``B * T`` nodes.

    Node ``b * T + t`` is token ``t`` of sequence ``b``. An edge ``(j, i)`` carries the
    attention that query ``i`` pays to key ``j`` and follows PyG's convention:
    ``edge_index[0]`` is the *source* (key, sending token) and ``edge_index[1]`` the
    *target* (query, receiving token), so messages flow ``j -> i`` and every edge
    satisfies ``edge_index[0] <= edge_index[1]``. No edge crosses two sequences and
    padding positions are isolated nodes.

    Attributes:
        edge_index: ``[2, E]`` flat node ids, row 0 = source, row 1 = target.
        edge_weight: ``[E]`` edge weights :math:`A'_{ij}`.
        batch: ``[N]`` sequence index of every node (``N = B * T``).
        num_nodes: ``N``.
        batch_size: ``B``.
        seq_len: ``T``, the number of key positions.
        query_offset: absolute position of the first query row (KV-cache decoding:
            targets are positions ``>= query_offset``).
    """

    edge_index: Tensor
    edge_weight: Tensor
    batch: Tensor
    num_nodes: int
    batch_size: int
    seq_len: int
    query_offset: int = 0

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.size(1))

    @property
    def source_position(self) -> Tensor:
        """``[E]`` token position (within its sequence) of each edge's source."""
        return self.edge_index[0] % self.seq_len

    @property
    def target_position(self) -> Tensor:
        """``[E]`` token position (within its sequence) of each edge's target."""
        return self.edge_index[1] % self.seq_len

    def detached(self) -> AttentionGraph:
        """The same graph with ``edge_weight`` detached from autograd."""
        if not self.edge_weight.requires_grad:
            return self
        return dataclasses.replace(self, edge_weight=self.edge_weight.detach())

    def num_cross_token_edges(self) -> int:
        """Number of edges between two different tokens (``source != target``)."""
        return int((self.edge_index[0] != self.edge_index[1]).sum())

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> AttentionGraph:
        """Move the graph to ``device``; ``dtype`` casts ``edge_weight`` only."""
        return AttentionGraph(
            edge_index=self.edge_index.to(device),
            edge_weight=self.edge_weight.to(device=device, dtype=dtype),
            batch=self.batch.to(device),
            num_nodes=self.num_nodes,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            query_offset=self.query_offset,
        )

    def to_dense(self) -> Tensor:
        """``[B, T, T]`` adjacency with ``A[b, i, j]`` = weight of the edge ``j -> i``."""
        B, T = self.batch_size, self.seq_len
        dense = self.edge_weight.new_zeros(B * T * T)
        src, dst = self.edge_index
        b = dst // T
        flat = b * T * T + (dst % T) * T + (src % T)
        dense = dense.index_put((flat,), self.edge_weight, accumulate=True)
        return dense.view(B, T, T)

    def to_pyg(self, x: Tensor | None = None) -> Batch:
        """A :class:`torch_geometric.data.Batch` of ``B`` graphs with ``edge_weight``.

        Args:
            x: optional node features ``[N, F]`` or ``[B, T, F]``.
        """
        B, T = self.batch_size, self.seq_len
        if x is not None:
            if x.dim() == 3:
                x = x.reshape(B * T, -1)
            if x.dim() != 2 or x.size(0) != self.num_nodes:
                raise ValueError(
                    f"x must have shape [{self.num_nodes}, F] or [{B}, {T}, F], "
                    f"got {tuple(x.shape)}"
                )
        data = []
        graph_of_edge = self.edge_index[1] // T
        counts = torch.bincount(graph_of_edge, minlength=B).tolist()
        order = torch.argsort(graph_of_edge, stable=True)
        edge_index = self.edge_index[:, order].split(counts, dim=1)
        edge_weight = self.edge_weight[order].split(counts)
        for b in range(B):
            kwargs = {} if x is None else {"x": x[b * T : (b + 1) * T]}
            data.append(
                Data(
                    edge_index=edge_index[b] - b * T,
                    edge_weight=edge_weight[b],
                    num_nodes=T,
                    **kwargs,
                )
            )
        return Batch.from_data_list(data)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_nodes={self.num_nodes}, "
            f"num_edges={self.num_edges}, batch_size={self.batch_size}, "
            f"seq_len={self.seq_len}, query_offset={self.query_offset})"
        )
