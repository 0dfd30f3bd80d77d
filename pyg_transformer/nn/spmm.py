r"""Weighted sparse-dense product :math:`Y_i = \sum_{e = (j \to i)} w_e X_j` with
gradients for both the node features and the edge weights."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch_geometric.index import index2ptr

__all__ = ["weighted_spmm"]


def _csr(ptr: Tensor, col: Tensor, value: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(ptr, col, value, size, check_invariants=False)


class _WeightedSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge_index: Tensor, weight: Tensor, x: Tensor, num_targets: int):
        source, target = edge_index
        ptr = index2ptr(target, num_targets)
        adj = _csr(ptr, source, weight.detach().to(x.dtype), (num_targets, x.size(0)))
        ctx.save_for_backward(source, target, ptr, weight, x)
        return torch.sparse.mm(adj, x.detach())

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        source, target, ptr, weight, x = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_weight = grad_x = None
        if ctx.needs_input_grad[1]:
            # sampled dense-dense product: grad_w_e = <grad_out_i, x_j> on the edges only
            pattern = _csr(ptr, source, torch.ones_like(weight, dtype=x.dtype),
                           (grad_out.size(0), x.size(0)))
            grad_weight = torch.sparse.sampled_addmm(
                pattern, grad_out, x.detach().t(), beta=0.0
            ).values().to(weight.dtype)
        if ctx.needs_input_grad[2]:
            # A^T grad_out: the same edges sorted by source
            order = torch.argsort(source, stable=True)
            ptr_t = index2ptr(source[order], x.size(0))
            adj_t = _csr(ptr_t, target[order], weight.detach()[order].to(x.dtype),
                         (x.size(0), grad_out.size(0)))
            grad_x = torch.sparse.mm(adj_t, grad_out)
        return None, grad_weight, grad_x, None


def weighted_spmm(edge_index: Tensor, edge_weight: Tensor, x: Tensor,
                  num_targets: int | None = None) -> Tensor:
    r""":math:`Y_i = \sum_{e = (j \to i)} w_e X_j` through CSR sparse-dense products
    (no ``[E, F]`` message tensor): forward ``A X``, backward ``A^T \bar Y`` and the
    sampled product :math:`\bar w_e = \langle \bar Y_i, X_j \rangle`.

    Args:
        edge_index: ``[2, E]`` (row 0 source ``j``, row 1 target ``i``), **sorted by
            target** and free of duplicate edges.
        edge_weight: ``[E]`` weights :math:`w_e` (may require grad).
        x: ``[N, F]`` source features.
        num_targets: number of target nodes (default ``N``).

    Returns:
        ``[num_targets, F]``.
    """
    num_targets = x.size(0) if num_targets is None else num_targets
    return _WeightedSpMM.apply(edge_index, edge_weight, x, num_targets)
