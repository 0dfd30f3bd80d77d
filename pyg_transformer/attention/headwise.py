"""Per-head layers evaluated for all heads at once (batched weights, no loop over heads)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HeadwiseLinear(nn.Module):
    r"""``H`` independent linear maps, one per head: :math:`y_h = x_h W_h + b_h`.

    Args:
        num_heads: ``H``.
        in_features: ``F_in`` per head.
        out_features: ``F_out`` per head.
        bias: add a per-head bias.

    Shapes:
        - **input:** ``[B, H, T, F_in]``
        - **output:** ``[B, H, T, F_out]``
    """

    def __init__(self, num_heads: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_heads, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_heads, 1, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        batch, heads, tokens, _ = x.shape
        # [H, B*T, F_in] @ [H, F_in, F_out]: one batched matmul for all heads
        flat = x.transpose(0, 1).reshape(heads, batch * tokens, self.in_features)
        out = torch.bmm(flat, self.weight) if self.bias is None else torch.baddbmm(
            self.bias, flat, self.weight
        )
        return out.view(heads, batch, tokens, self.out_features).transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


class HeadwiseRMSNorm(nn.Module):
    r"""RMSNorm with a separate gain per head: :math:`g_h \odot x / \mathrm{rms}(x)`.

    Shapes: ``[B, H, T, F]`` -> ``[B, H, T, F]``.
    """

    def __init__(self, num_heads: int, features: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, 1, features))
        self.variance_epsilon = eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class HeadwiseGINMLP(nn.Module):
    r"""The per-head GIN MLP of GIN-Attention,
    :math:`X'_h = \mathrm{MLP}_h(\epsilon_h X_h + A'_h X_h)`, with
    :math:`\mathrm{MLP}_h(z) = W_{2,h}\,\mathrm{Dropout}(\mathrm{SiLU}(\mathrm{RMSNorm}_h(W_{1,h} z)))`.

    Args:
        num_heads: ``H``.
        features: head size ``d`` (input and output).
        hidden: hidden units per head (``int(gamma * d)``).
        dropout: dropout probability after the activation.
        rms_norm_eps: epsilon of the RMSNorm.

    Shapes: ``[B, H, T, d]`` -> ``[B, H, T, d]``.
    """

    def __init__(self, num_heads: int, features: int, hidden: int, dropout: float = 0.0,
                 rms_norm_eps: float = 1e-6):
        super().__init__()
        self.lin1 = HeadwiseLinear(num_heads, features, hidden)
        self.norm = HeadwiseRMSNorm(num_heads, hidden, eps=rms_norm_eps)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.lin2 = HeadwiseLinear(num_heads, hidden, features)

    def forward(self, z: Tensor) -> Tensor:
        return self.lin2(self.dropout(self.act(self.norm(self.lin1(z)))))


class HeadwisePNAMLP(nn.Module):
    r"""The per-head PNA MLP of PNA-Attention: :math:`W_{2,h}\,\mathrm{SiLU}(W_{1,h} z)`,
    ``z`` the concatenated aggregations (sum :math:`A'X`, mean :math:`A'X/\deg`,
    weighted max, variance).

    Shapes: ``[B, H, T, F_in]`` -> ``[B, H, T, d]``.
    """

    def __init__(self, num_heads: int, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.lin1 = HeadwiseLinear(num_heads, in_features, hidden)
        self.act = nn.SiLU()
        self.lin2 = HeadwiseLinear(num_heads, hidden, out_features)

    def forward(self, z: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(z)))
