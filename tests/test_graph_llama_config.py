"""GraphLlamaConfig: defaults, serialisation, ValueError on invalid values and the
deprecated ``top_k`` name of ``adjacency_top_k``."""

import json
import warnings

import pytest
from transformers import AutoConfig

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
                            adjacency_top_k=4).resolved_graph_backend == "pyg"
    assert GraphLlamaConfig(**BASE, adjacency_activation="relu_threshold",
                            graph_backend="dense").resolved_graph_backend == "dense"


def test_dict_round_trip_keeps_every_graph_option():
    config = GraphLlamaConfig(
        **BASE, attention_type="pna", adjacency_activation="top_k", adjacency_top_k=0.25,
        sharpening=False, sharpening_init=3.0, adjacency_beta=4.0, adjacency_tau=0.2,
        gin_mlp_multiplier=2.0, gin_eps_init=0.1, use_o_proj=True, value_projection=True,
        pna_aggregators=["var", "max"], pna_blend=True, graph_backend="dense",
    )
    loaded = GraphLlamaConfig.from_dict(config.to_dict())
    for name in ("attention_type", "adjacency_activation", "adjacency_top_k", "sharpening",
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
    ({"adjacency_activation": "top_k"}, "adjacency_top_k"),
    ({"adjacency_activation": "top_k", "adjacency_top_k": 0}, "adjacency_top_k"),
    ({"adjacency_activation": "top_k", "adjacency_top_k": 1.5}, "adjacency_top_k"),
    ({"adjacency_activation": "top_k", "adjacency_top_k": True}, "adjacency_top_k"),
    ({"adjacency_top_k": 4}, "adjacency_top_k"),  # without the top_k activation: a dead option
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


# inherited Llama fields the graph models read (issue 8): (overrides, exception, message)
INVALID_LLAMA = [
    ({"num_attention_heads": 0}, ValueError, r"num_attention_heads must be an int >= 1, got 0"),
    ({"num_attention_heads": -4}, ValueError, r"num_attention_heads must be an int >= 1, got -4"),
    ({"vocab_size": 0}, ValueError, r"vocab_size must be an int >= 1, got 0"),
    ({"vocab_size": "64"}, TypeError, r"vocab_size='64'"),
    ({"hidden_size": 32.0}, TypeError, r"hidden_size=32.0"),
    ({"intermediate_size": -1}, ValueError, r"intermediate_size must be an int >= 1, got -1"),
    ({"num_hidden_layers": 0}, ValueError, r"num_hidden_layers must be an int >= 1, got 0"),
    ({"num_key_value_heads": 0}, ValueError, r"num_key_value_heads must be an int >= 1, got 0"),
    ({"num_key_value_heads": 3}, ValueError, r"num_attention_heads \(4\) .* num_key_value_heads \(3\)"),
    ({"hidden_size": 30}, ValueError, r"hidden size \(30\) is not a multiple .* \(4\)"),
    ({"attention_type": "standard", "head_dim": 0}, ValueError, r"head_dim must be an int >= 1, got 0"),
    ({"max_position_embeddings": 0}, ValueError, r"max_position_embeddings must be an int >= 1, got 0"),
    ({"rms_norm_eps": -1.0}, ValueError, r"rms_norm_eps must be a positive finite number, got -1.0"),
    ({"rms_norm_eps": float("nan")}, ValueError, r"rms_norm_eps must be a positive finite number, got nan"),
    ({"attention_dropout": float("nan")}, ValueError, r"attention_dropout must be None or in \[0, 1\), got nan"),
    ({"attention_dropout": 1.0}, ValueError, r"attention_dropout must be None or in \[0, 1\), got 1.0"),
    ({"initializer_range": 0.0}, ValueError, r"initializer_range must be a positive finite number, got 0.0"),
    ({"initializer_range": -1.0}, ValueError, r"initializer_range=-1.0"),
    ({"initializer_range": float("nan")}, ValueError, r"initializer_range=nan"),
    ({"rope_theta": -1.0}, ValueError, r"rope_theta must be a positive finite number, got -1.0"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": float("inf")}}, ValueError,
     r"rope_theta must be a positive finite number, got inf"),
    ({"hidden_act": "swishy"}, ValueError, r"hidden_act must be one of .*'silu'.* got 'swishy'"),
]


@pytest.mark.parametrize("overrides,error,match", INVALID_LLAMA)
def test_invalid_llama_fields_raise(overrides, error, match):
    with pytest.raises(error, match=match):
        GraphLlamaConfig(**{**BASE, **overrides})


def test_valid_llama_fields_round_trip_through_from_pretrained(tmp_path):
    config = GraphLlamaConfig(**BASE, rope_theta=500.0, hidden_act="gelu", attention_dropout=0.1,
                              rms_norm_eps=1e-5, initializer_range=0.1, max_position_embeddings=16)
    config.save_pretrained(tmp_path)
    loaded = GraphLlamaConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.rope_parameters["rope_theta"] == 500.0 and loaded.hidden_act == "gelu"
    assert GraphLlamaConfig(**BASE, attention_dropout=None).attention_dropout is None


def test_old_top_k_keyword_is_deprecated_and_moved():
    with pytest.warns(FutureWarning, match="`top_k` is deprecated.*use `adjacency_top_k`"):
        config = GraphLlamaConfig(**BASE, top_k=8, adjacency_activation="top_k")
    assert config.adjacency_top_k == 8 and config.resolved_graph_backend == "pyg"
    assert not hasattr(config, "top_k") and "top_k" not in config.to_dict()
    with pytest.warns(FutureWarning):  # the same value under both names is fine
        assert GraphLlamaConfig(**BASE, top_k=0.5, adjacency_top_k=0.5,
                                adjacency_activation="top_k").adjacency_top_k == 0.5
    with pytest.warns(FutureWarning), pytest.raises(
            ValueError, match=r"both adjacency_top_k=4 and its deprecated name top_k=8"):
        GraphLlamaConfig(**BASE, top_k=8, adjacency_top_k=4, adjacency_activation="top_k")
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="adjacency_top_k"):
        GraphLlamaConfig(**BASE, top_k=0, adjacency_activation="top_k")


def _write_old_config(path, **graph) -> None:
    """A ``config.json`` as the code before the rename saved it: ``top_k`` always there."""
    config = GraphLlamaConfig(**BASE, **{k: v for k, v in graph.items() if k != "top_k"},
                              adjacency_top_k=graph.get("top_k")).to_dict()
    config["top_k"] = config.pop("adjacency_top_k")
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("load", [GraphLlamaConfig.from_pretrained, AutoConfig.from_pretrained])
def test_config_saved_with_the_old_name_loads_and_saves_the_new_one(tmp_path, load):
    _write_old_config(tmp_path / "old", attention_type="pna", adjacency_activation="top_k",
                      top_k=0.25)
    with pytest.warns(FutureWarning, match="`top_k` is deprecated"):
        config = load(tmp_path / "old")
    assert isinstance(config, GraphLlamaConfig)
    assert (config.attention_type, config.adjacency_top_k) == ("pna", 0.25)
    config.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["adjacency_top_k"] == 0.25 and "top_k" not in saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(tmp_path / "new").adjacency_top_k == 0.25


def test_old_default_top_k_null_loads_silently(tmp_path):
    """Every old ``config.json`` holds ``"top_k": null`` (the default): nothing to move."""
    _write_old_config(tmp_path, adjacency_activation="softmax")
    assert json.loads((tmp_path / "config.json").read_text())["top_k"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = AutoConfig.from_pretrained(tmp_path)
    assert config.adjacency_top_k is None and "top_k" not in config.to_dict()
