"""Attention graphs as pictures (paper Fig. 2): the adjacency heatmap and the causal graph."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from pyg_transformer.graph import AttentionGraph
from pyg_transformer.viz.utils import new_figure, save_figure


def _dense(graph: AttentionGraph | Tensor, index: int) -> Tensor:
    if isinstance(graph, AttentionGraph):
        dense = graph.to_dense()
    elif isinstance(graph, Tensor):
        dense = graph
    else:
        raise TypeError(f"expected an AttentionGraph or a [T, T] / [B, T, T] tensor, "
                        f"got {type(graph).__name__}")
    if dense.dim() == 2:
        dense = dense.unsqueeze(0)
    if dense.dim() != 3 or dense.size(-1) != dense.size(-2):
        raise ValueError(f"adjacency must be [T, T] or [B, T, T], got {tuple(dense.shape)}")
    if not -dense.size(0) <= index < dense.size(0):
        raise ValueError(f"index {index} out of range for a batch of {dense.size(0)}")
    return dense[index].detach().to("cpu", torch.float32)


def _check_tokens(tokens: Sequence[str] | None, num: int) -> None:
    if tokens is not None and len(tokens) != num:
        raise ValueError(f"got {len(tokens)} tokens for a graph of {num} positions")


def plot_attention_adjacency(
    graph: AttentionGraph | Tensor,
    path: str | os.PathLike,
    *,
    index: int = 0,
    tokens: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
) -> Path:
    r"""Heatmap of one sequence's adjacency ``A[i, j]`` (weight of the edge ``j -> i``):
    rows are queries (targets), columns keys (sources); causal graphs are lower-triangular.

    Args:
        graph: an :class:`~pyg_transformer.graph.AttentionGraph` or a dense ``[T, T]`` /
            ``[B, T, T]`` tensor.
        path: the PNG to write (parent folders are created).
        index: which sequence of the batch.
        tokens: ``T`` token strings for the axes.
        title: figure title.
        cmap: matplotlib colormap.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dense = _dense(graph, index)
    num = dense.size(0)
    _check_tokens(tokens, num)
    size = min(12.0, 3.0 + 0.25 * num)
    fig = new_figure((size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(dense.numpy(), cmap=cmap, vmin=0.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="edge weight")
    ax.set_xlabel("key j (source)")
    ax.set_ylabel("query i (target)")
    if tokens is not None:
        ax.set_xticks(range(num), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(num), tokens, fontsize=7)
    ax.set_title(title or "attention adjacency A[i, j]")
    return save_figure(fig, path)


def plot_attention_graph(
    graph: AttentionGraph | Tensor,
    path: str | os.PathLike,
    *,
    index: int = 0,
    tokens: Sequence[str] | None = None,
    min_weight: float = 0.0,
    title: str | None = None,
) -> Path:
    r"""The causal attention graph of one sequence: tokens left to right by position, an arc
    from source ``j`` to target ``i > j`` for every edge with weight above ``min_weight``,
    line width and opacity proportional to the weight; node colour is the self-loop weight
    ``A[i, i]``.

    Args:
        graph: an :class:`~pyg_transformer.graph.AttentionGraph` or a dense ``[T, T]`` /
            ``[B, T, T]`` tensor (``A[i, j]`` = weight of ``j -> i``).
        path: the PNG to write.
        index: which sequence of the batch.
        tokens: ``T`` token strings written under the nodes.
        min_weight: edges with weight ``<= min_weight`` are not drawn.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.patches import Arc

    dense = _dense(graph, index)
    num = dense.size(0)
    _check_tokens(tokens, num)
    targets, sources = torch.nonzero(torch.tril(dense, diagonal=-1) > min_weight, as_tuple=True)
    weights = dense[targets, sources]
    max_weight = float(weights.max()) if weights.numel() else 1.0
    fig = new_figure((min(16.0, 3.0 + 0.45 * num), 4.0))
    ax = fig.add_subplot()
    for i, j, w in zip(targets.tolist(), sources.tolist(), weights.tolist()):
        strength = w / max_weight
        ax.add_patch(Arc(((i + j) / 2, 0.0), width=i - j, height=(i - j) * 0.9, theta1=0,
                         theta2=180, linewidth=0.3 + 3.0 * strength,
                         alpha=0.15 + 0.85 * strength, color="tab:blue"))
    nodes = ax.scatter(range(num), [0.0] * num, c=torch.diagonal(dense).numpy(), cmap="Oranges",
                       vmin=0.0, s=60, zorder=3, edgecolors="black", linewidths=0.5)
    fig.colorbar(nodes, ax=ax, label="self-loop weight", fraction=0.03)
    if tokens is not None:
        for t, token in enumerate(tokens):
            ax.text(t, -0.15, token, rotation=90, ha="center", va="top", fontsize=7)
    ax.set_xlim(-1, num)
    ax.set_ylim(-0.25 * max(4, num) / 4 if tokens is not None else -0.5, 0.5 * max(num, 2))
    ax.set_yticks([])
    ax.set_xlabel("token position (messages flow left to right: source j -> target i)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"causal attention graph ({len(weights)} cross-token edges)")
    return save_figure(fig, path)
