"""Figures (matplotlib, written as PNG): attention graphs and training dynamics."""

from pyg_transformer.viz.attention import plot_attention_adjacency, plot_attention_graph
from pyg_transformer.viz.training import (
    plot_alpha_per_layer,
    plot_generalization_gap,
    plot_lambda_over_training,
    plot_training_curves,
)

__all__ = [
    "plot_alpha_per_layer",
    "plot_attention_adjacency",
    "plot_attention_graph",
    "plot_generalization_gap",
    "plot_lambda_over_training",
    "plot_training_curves",
]
