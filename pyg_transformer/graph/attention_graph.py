"""The batched causal attention graph in PyG's COO layout."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_adj


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

    @classmethod
    def from_coo(cls, edge_index: Tensor, edge_weight: Tensor, *, batch_size: int,
                 seq_len: int, query_offset: int = 0) -> AttentionGraph:
        """The graph of ``batch_size`` sequences of ``seq_len`` tokens with COO edges
        ``edge_index [2, E]`` (flat node ids ``b * seq_len + t``, row 0 the source) and
        ``edge_weight [E]``; ``batch`` and ``num_nodes`` follow."""
        batch = torch.arange(batch_size, device=edge_index.device)
        return cls(
            edge_index=edge_index,
            edge_weight=edge_weight,
            batch=batch.repeat_interleave(seq_len),
            num_nodes=batch_size * seq_len,
            batch_size=batch_size,
            seq_len=seq_len,
            query_offset=query_offset,
        )

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
        return dataclasses.replace(
            self,
            edge_index=self.edge_index.to(device),
            edge_weight=self.edge_weight.to(device=device, dtype=dtype),
            batch=self.batch.to(device),
        )

    def to_dense(self) -> Tensor:
        """``[B, T, T]`` adjacency with ``A[b, i, j]`` = weight of the edge ``j -> i``
        (duplicate edges summed; :func:`torch_geometric.utils.to_dense_adj` on the
        reversed edges)."""
        return to_dense_adj(self.edge_index.flip(0), self.batch, self.edge_weight,
                            max_num_nodes=self.seq_len, batch_size=self.batch_size)

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


class DecodeRow:
    r"""The adjacency of a single-query KV-cache decode step, kept dense: ``weight``
    ``[B, Tk]`` holds the edge weight :math:`A'_{t,j}` of every kept edge ``j -> t``
    (``t = Tk - 1``, the new token) and 0 elsewhere (kept weights are sigmoids above
    :math:`\varepsilon \ge 0`, hence > 0). The :class:`AttentionGraph` is built from it
    only when asked for (:meth:`to_graph`)."""

    __slots__ = ("weight",)

    def __init__(self, weight: Tensor):
        self.weight = weight

    @classmethod
    def from_coo(cls, edge_index: Tensor, edge_weight: Tensor, batch_size: int,
                 seq_len: int) -> DecodeRow:
        """The dense row of COO edges whose targets are the last position of each
        sequence (flat ids ``b * seq_len + t``; duplicate edges summed)."""
        weight = edge_weight.new_zeros(batch_size * seq_len).index_put_(
            (edge_index[0],), edge_weight, accumulate=True)
        return cls(weight.view(batch_size, seq_len))

    @property
    def seq_len(self) -> int:
        return self.weight.size(1)

    def to_graph(self) -> AttentionGraph:
        """The equivalent :class:`AttentionGraph` (edges in ``(batch, key)`` order)."""
        batch_size, seq_len = self.weight.shape
        flat = self.weight.reshape(-1)
        source = flat.nonzero().view(-1)
        target = source - source % seq_len + (seq_len - 1)
        return AttentionGraph.from_coo(torch.stack([source, target]), flat[source],
                                       batch_size=batch_size, seq_len=seq_len,
                                       query_offset=seq_len - 1)
