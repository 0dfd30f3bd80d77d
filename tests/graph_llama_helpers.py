"""Tiny GraphLlama configurations shared by the model and attention tests."""

from pyg_transformer import GraphLlamaConfig

#: adjacency activations with options that keep a fair number of edges
ACTIVATIONS = {
    "softmax": {},
    "sigmoid": {"adjacency_beta": 2.0, "adjacency_tau": 0.1},
    "sharp_softplus": {"adjacency_beta": 2.0, "adjacency_tau": 0.1},
    "relu_threshold": {"adjacency_tau": 0.12},
    "top_k": {"adjacency_top_k": 3},
}


def tiny_config(**overrides) -> GraphLlamaConfig:
    kwargs = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    return GraphLlamaConfig(**kwargs)
