"""GraphLlamaConfig: defaults, serialisation and ValueError on invalid values."""

import pytest

from pyg_transformer import GraphLlamaConfig

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def test_defaults_follow_the_papers_best_model():
    config = GraphLlamaConfig(**BASE)
    assert config.model_type == "graph_llama"
    assert config.attention_type == "gin" and config.adjacency_activation == "softmax"
    assert config.sharpening and config.sharpening_init == 1.0
    assert config.gin_mlp_multiplier == 0.5 and config.gin_mlp_hidden_size == 4
    assert not config.use_o_proj and not config.value_projection
    assert config.pna_aggregators == ["sum", "mean", "max", "var"]
    assert config.resolved_graph_backend == "dense"
    assert GraphLlamaConfig(**BASE, adjacency_activation="top_k",
                            top_k=4).resolved_graph_backend == "pyg"
    assert GraphLlamaConfig(**BASE, adjacency_activation="relu_threshold",
                            graph_backend="dense").resolved_graph_backend == "dense"


def test_dict_round_trip_keeps_every_graph_option():
    config = GraphLlamaConfig(
        **BASE, attention_type="pna", adjacency_activation="top_k", top_k=0.25,
        sharpening=False, sharpening_init=3.0, adjacency_beta=4.0, adjacency_tau=0.2,
        gin_mlp_multiplier=2.0, gin_eps_init=0.1, use_o_proj=True, value_projection=True,
        pna_aggregators=["var", "max"], pna_blend=True, graph_backend="dense",
    )
    loaded = GraphLlamaConfig.from_dict(config.to_dict())
    for name in ("attention_type", "adjacency_activation", "top_k", "sharpening",
                 "sharpening_init", "adjacency_beta", "adjacency_tau", "gin_mlp_multiplier",
                 "gin_eps_init", "use_o_proj", "value_projection", "pna_aggregators",
                 "pna_blend", "graph_backend"):
        assert getattr(loaded, name) == getattr(config, name), name


INVALID = [
    ({"attention_type": "gat"}, "attention_type"),
    ({"adjacency_activation": "relu"}, "adjacency_activation"),
    ({"graph_backend": "sparse"}, "graph_backend"),
    ({"gin_mlp_multiplier": 0}, "gin_mlp_multiplier"),
    ({"gin_mlp_multiplier": -0.5}, "gin_mlp_multiplier"),
    ({"gin_mlp_multiplier": 0.1}, "gin_mlp_multiplier"),  # 0.1 * 8 < 1 hidden unit
    ({"hidden_size": 30}, "hidden size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"head_dim": 16}, "head_dim"),
    ({"adjacency_activation": "top_k"}, "top_k"),
    ({"adjacency_activation": "top_k", "top_k": 0}, "top_k"),
    ({"adjacency_activation": "top_k", "top_k": 1.5}, "top_k"),
    ({"adjacency_activation": "top_k", "top_k": True}, "top_k"),
    ({"top_k": 4}, "top_k"),  # top_k without the top_k activation would be a dead option
    ({"sharpening_init": 0.0}, "sharpening_init"),
    ({"sharpening_init": float("inf")}, "sharpening_init"),
    ({"adjacency_beta": -1.0}, "adjacency_beta"),
    ({"adjacency_tau": float("nan")}, "adjacency_tau"),
    ({"gin_eps_init": "0"}, "gin_eps_init"),
    ({"adjacency_tau_trainable": True}, "adjacency_tau_trainable"),  # softmax reads no tau
    ({"pna_aggregators": []}, "pna_aggregators"),
    ({"pna_aggregators": ["sum", "median"]}, "pna_aggregators"),
    ({"pna_aggregators": ["sum", "sum"]}, "pna_aggregators"),
    ({"pna_blend": True}, "pna_blend"),  # only for attention_type="pna"
    ({"use_o_proj": "yes"}, "use_o_proj"),
]


@pytest.mark.parametrize("overrides,match", INVALID)
def test_invalid_values_raise_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        GraphLlamaConfig(**{**BASE, **overrides})


def test_standard_attention_ignores_graph_only_shape_rules():
    config = GraphLlamaConfig(**{**BASE, "attention_type": "standard", "head_dim": 16,
                                 "gin_mlp_multiplier": 0.01})
    assert config.head_dim == 16
