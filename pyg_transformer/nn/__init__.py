"""PyG layers for message passing over attention graphs."""

from pyg_transformer.nn.degree import causal_degree_histogram, degree_histogram
from pyg_transformer.nn.weighted_gin_conv import WeightedGINConv

__all__ = ["WeightedGINConv", "causal_degree_histogram", "degree_histogram"]
