"""Training figures: learned alpha per layer (Fig. 5), lambda over training (Figs. 10-11),
loss curves of compared arms (Figs. 4, 9) and generalisation-gap bars (Fig. 7)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyg_transformer.training.evaluation import loss_curves
from pyg_transformer.viz.utils import new_figure, save_figure

LogHistory = Sequence[Mapping[str, Any]]


def _as_array(values, name: str) -> np.ndarray:
    array = torch.as_tensor(values).detach().to("cpu", torch.float64).numpy()
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected per-layer values with dim 0 = layer, got shape "
                         f"{array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: values are not finite: {array.tolist()}")
    return array.reshape(array.shape[0], -1)


def plot_alpha_per_layer(
    alpha,
    path: str | os.PathLike,
    *,
    ylabel: str = r"learned $\alpha$",
    title: str | None = None,
) -> Path:
    r"""Learned per-layer values (the sharpening :math:`\alpha_l` of GIN-Attention, paper
    Fig. 5) against depth.

    Args:
        alpha: ``[L]`` (or ``[L, H]``: the mean is drawn with a min-max band over the rest),
            or a mapping ``{model name: values}`` for one line per model, e.g.
            ``model.graph_parameters()["alpha"]``.
        path: the PNG to write.
        ylabel: y-axis label (e.g. ``r"$\lambda$"`` for adapter scales).
        title: figure title.
    """
    series = alpha if isinstance(alpha, Mapping) else {"": alpha}
    if not series:
        raise ValueError("alpha mapping is empty")
    fig = new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    for name, values in series.items():
        array = _as_array(values, f"alpha[{name!r}]" if name else "alpha")
        layers = np.arange(array.shape[0])
        mean = array.mean(axis=1)
        ax.plot(layers, mean, marker="o", label=name or None)
        if array.shape[1] > 1:
            ax.fill_between(layers, array.min(axis=1), array.max(axis=1), alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if any(series):
        ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title or "learned graph parameter per layer")
    return save_figure(fig, path)


def plot_lambda_over_training(
    history: LogHistory,
    path: str | os.PathLike,
    *,
    key: str = "lambda",
    title: str | None = None,
) -> Path:
    r"""Per-layer scalar ``key`` over training steps, one line per layer coloured by depth
    (paper Figs. 10-11).

    Args:
        history: :attr:`GraphParameterCallback.history
            <pyg_transformer.training.GraphParameterCallback.history>` or
            ``trainer.state.log_history`` (entries with ``"step"`` and ``"{key}/layer_{l}"``).
        path: the PNG to write.
        key: the graph parameter (``"lambda"``, ``"alpha"``, ``"eps"``, ...).
        title: figure title.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    pattern = re.compile(rf"^{re.escape(key)}/layer_(\d+)$")
    series: dict[int, list[tuple[int, float]]] = {}
    for entry in history:
        for name, value in entry.items():
            match = pattern.match(name)
            if match:
                point = (int(entry["step"]), float(value))
                series.setdefault(int(match.group(1)), []).append(point)
    if not series:
        raise ValueError(f"history has no '{key}/layer_<l>' entries; log them with "
                         "GraphParameterCallback")
    num_layers = max(series) + 1
    norm = Normalize(0, max(num_layers - 1, 1))
    cmap = colormaps["viridis"]
    fig = new_figure((6.5, 4.0))
    ax = fig.add_subplot()
    for layer in sorted(series):
        points = sorted(dict(series[layer]).items())
        ax.plot([s for s, _ in points], [v for _, v in points], color=cmap(norm(layer)),
                label=f"layer {layer}" if num_layers <= 8 else None)
    if num_layers <= 8:
        ax.legend(fontsize=8)
    else:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer")
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{key} per layer over training")
    return save_figure(fig, path)


def _is_log_history(value) -> bool:
    return isinstance(value, Sequence) and all(isinstance(e, Mapping) for e in value)


def _mean_curve(histories: Sequence[LogHistory], split: str):
    """Mean and std over runs at the steps every run logged."""
    curves = [dict(loss_curves(h)[split]) for h in histories]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves])
    return np.array(steps), values.mean(axis=0), values.std(axis=0)


def plot_training_curves(
    runs: Mapping[str, LogHistory | Sequence[LogHistory]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    log_scale: bool = False,
) -> Path:
    r"""Training (solid) and validation (dashed) loss of compared arms (paper Figs. 4, 9).

    Args:
        runs: ``{arm: trainer.state.log_history}``, or ``{arm: [log_history per seed]}`` to
            draw the mean with a :math:`\pm` std band over seeds (at the steps all seeds logged).
        path: the PNG to write.
        title: figure title.
        log_scale: logarithmic loss axis.
    """
    if not runs:
        raise ValueError("runs is empty")
    fig = new_figure((7.0, 4.5))
    ax = fig.add_subplot()
    drawn = 0
    for color_index, (arm, value) in enumerate(runs.items()):
        histories = [value] if _is_log_history(value) else list(value)
        if not histories or not all(_is_log_history(h) for h in histories):
            raise TypeError(f"runs[{arm!r}] must be a log history (list of dicts) or a list "
                            "of them")
        color = f"C{color_index % 10}"
        for split, style in (("train", "-"), ("eval", "--")):
            curve = _mean_curve(histories, split)
            if curve is None:
                continue
            steps, mean, std = curve
            label = f"{arm} ({'validation' if split == 'eval' else 'train'})"
            ax.plot(steps, mean, style, color=color, label=label)
            if len(histories) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
            drawn += 1
    if drawn == 0:
        raise ValueError("no run has a 'loss' or 'eval_loss' entry in its log history")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "training and validation loss")
    return save_figure(fig, path)


def plot_generalization_gap(
    gaps: Mapping[str, float | Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    r"""Bars of the generalisation gap (validation minus training loss, see
    :func:`~pyg_transformer.training.generalization_gap`) per arm, paper Fig. 7.

    Args:
        gaps: ``{arm: gap}`` or ``{arm: [gap per seed]}`` (bar = mean, error bar = std).
        path: the PNG to write.
        title: figure title.
    """
    if not gaps:
        raise ValueError("gaps is empty")
    names, means, stds = [], [], []
    for arm, value in gaps.items():
        values = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"gaps[{arm!r}] must be finite numbers, got {value!r}")
        names.append(str(arm))
        means.append(values.mean())
        stds.append(values.std() if values.size > 1 else 0.0)
    fig = new_figure((max(4.0, 1.2 * len(names) + 2.0), 4.0))
    ax = fig.add_subplot()
    errors = [s if s > 0 else np.nan for s in stds]  # no error bar for single runs
    bars = ax.bar(names, means, yerr=errors, capsize=4,
                  color=[f"C{i % 10}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{m:.3g}" for m in means], padding=3, fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("validation loss - training loss")
    low = min(0.0, *(m - s for m, s in zip(means, stds)))
    high = max(0.0, *(m + s for m, s in zip(means, stds)))
    margin = 0.15 * (high - low) if high > low else 1.0
    ax.set_ylim(low - margin, high + margin)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "generalisation gap")
    return save_figure(fig, path)
