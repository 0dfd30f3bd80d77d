"""GraphLlama as a Hugging Face causal LM: Auto classes, save/load, generate + KV cache,
gradients, introspection, Trainer."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from pyg_transformer import (
    AttentionGraph,
    GINAttention,
    GraphLlamaConfig,
    GraphLlamaForCausalLM,
    GraphLlamaModel,
    PNAAttention,
)

from graph_llama_helpers import ACTIVATIONS, tiny_config


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return GraphLlamaForCausalLM(tiny_config(**overrides)).eval()


def test_auto_classes_after_import():
    config = tiny_config(attention_type="pna")
    model = AutoModelForCausalLM.from_config(config)
    assert isinstance(model, GraphLlamaForCausalLM)
    assert isinstance(model.model.layers[0].self_attn, PNAAttention)
    assert isinstance(AutoModel.from_config(config), GraphLlamaModel)
    assert isinstance(AutoConfig.for_model("graph_llama"), GraphLlamaConfig)


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_type": "gin"},
        {"attention_type": "gin", "adjacency_activation": "sigmoid", "adjacency_tau_trainable": True,
         "use_o_proj": True, "value_projection": True, "sharpening": False,
         "sharpening_init": 2.0},
        {"attention_type": "pna", "adjacency_activation": "top_k", "adjacency_top_k": 0.5,
         "pna_blend": True, "pna_aggregators": ["max", "sum"]},
        {"attention_type": "standard"},
    ],
)
def test_save_load_round_trip(tmp_path, overrides):
    model = build(**overrides)
    with torch.no_grad():  # move the graph scalars away from their initial values
        for name, param in model.named_parameters():
            if name.endswith(("log_alpha", "eps", "tau", "blend_logit")):
                param.add_(0.3)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GraphLlamaForCausalLM)
    for key, value in overrides.items():
        assert getattr(loaded.config, key) == value
    ids = torch.randint(3, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    params = model.graph_parameters()
    for key, value in loaded.graph_parameters().items():
        assert torch.equal(value, params[key])
    assert "top_k" not in loaded.generation_config.to_diff_dict()


GENERATE_CASES = [("gin", a, b) for a in ACTIVATIONS for b in ("dense", "pyg")] + [
    ("pna", a, "auto") for a in ("softmax", "top_k")] + [("standard", "softmax", "auto")]


@pytest.mark.parametrize("attention_type,activation,backend", GENERATE_CASES)
def test_generate_with_and_without_cache(attention_type, activation, backend):
    model = build(attention_type=attention_type, adjacency_activation=activation,
                  graph_backend=backend, pna_blend=attention_type == "pna",
                  **ACTIVATIONS[activation])
    torch.manual_seed(4)
    ids = torch.randint(3, 64, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    kwargs = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    # the cached decode gives the full forward's logits, not only the same argmax
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        full = model(cached, attention_mask=full_mask).logits
        cache = DynamicCache(config=model.config)
        step = model(cached[:, :6], attention_mask=full_mask[:, :6], cache=cache,
                     use_cache=True).logits
        logits = [step]
        for t in range(6, 12):
            logits.append(model(cached[:, t : t + 1], attention_mask=full_mask[:, : t + 1],
                                cache=cache, use_cache=True).logits)
    incremental = torch.cat(logits, dim=1)
    real = full_mask.bool()
    torch.testing.assert_close(incremental[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["softmax", "top_k"])
@pytest.mark.parametrize("attention_type", ["gin", "pna"])
def test_gradients_reach_graph_parameters(attention_type, activation):
    model = build(attention_type=attention_type, adjacency_activation=activation,
                  **ACTIVATIONS[activation]).train()
    ids = torch.randint(3, 64, (2, 10))
    model(ids, labels=ids).loss.backward()
    attn = model.model.layers[0].self_attn
    reached = [attn.q_proj.weight, attn.k_proj.weight, attn.log_alpha,
               attn.mlp.lin1.weight, attn.mlp.lin2.weight]
    if attention_type == "gin":
        reached += [attn.eps, attn.mlp.norm.weight]
    for param in reached:
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_type": "gin", "use_o_proj": True, "value_projection": True,
         "adjacency_activation": "relu_threshold", "adjacency_tau": 0.12,
         "adjacency_tau_trainable": True},
        {"attention_type": "gin", "adjacency_activation": "sharp_softplus",
         "adjacency_tau_trainable": True, "graph_backend": "pyg"},
        {"attention_type": "pna", "pna_blend": True, "use_o_proj": True,
         "value_projection": True},
        {"attention_type": "pna", "adjacency_activation": "top_k", "adjacency_top_k": 2,
         "graph_backend": "pyg"},
        {"attention_type": "standard"},
    ],
)
def test_no_registered_parameter_is_unused(overrides):
    model = build(**overrides).train()
    ids = torch.randint(3, 64, (2, 10))
    model(ids, labels=ids).loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused


def test_graph_parameters_contract():
    gin = build(attention_type="gin", adjacency_activation="sigmoid",
                adjacency_tau_trainable=True, adjacency_tau=0.25, sharpening_init=2.0,
                gin_eps_init=0.5)
    params = gin.graph_parameters()
    assert set(params) == {"alpha", "eps", "tau"}
    assert params["alpha"].shape == (2,) and params["eps"].shape == (2, 4)
    torch.testing.assert_close(params["alpha"], torch.full((2,), 2.0))
    torch.testing.assert_close(params["eps"], torch.full((2, 4), 0.5))
    torch.testing.assert_close(params["tau"], torch.full((2,), 0.25))
    assert all(not v.requires_grad and v.device.type == "cpu" for v in params.values())
    pna = build(attention_type="pna", pna_blend=True).graph_parameters()
    assert set(pna) == {"alpha", "pna_lambda"}
    torch.testing.assert_close(pna["pna_lambda"], torch.full((2,), 0.5))
    assert build(attention_type="standard").graph_parameters() == {}
    assert isinstance(gin.model.layers[1].self_attn, GINAttention)


@pytest.mark.parametrize("backend", ["dense", "pyg"])
def test_attention_graphs_are_the_layers_adjacency(backend):
    model = build(attention_type="gin", adjacency_activation="top_k", adjacency_top_k=2,
                  graph_backend=backend)
    ids = torch.randint(3, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    graphs = model.attention_graphs(ids, attention_mask=mask)
    assert len(graphs) == 2 and len(graphs[0]) == 4
    graph = model.attention_graphs(ids, attention_mask=mask, layer=1, head=3)
    assert isinstance(graph, AttentionGraph)
    assert graph.batch_size == 2 and graph.seq_len == 7
    assert torch.equal(graph.edge_weight, graphs[1][3].edge_weight)
    src, dst = graph.edge_index
    assert (src <= dst).all() and graph.num_cross_token_edges() > 0
    assert not ((src < 2) | (dst < 2)).any()  # sequence 0's padding is isolated
    in_degree = torch.bincount(dst, minlength=14)
    assert in_degree.max() <= 2
    # the head's adjacency reproduces the layer's neighbour sum A'X on the PyG side
    attn = model.model.layers[1].self_attn
    captured = {}
    hook = attn.register_forward_pre_hook(
        lambda m, a, k: captured.update(k), with_kwargs=True)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    hook.remove()
    x = captured["hidden_states"].view(2, 7, 4, 8)[:, :, 3]  # head 3's input slice
    neighbour_sum = graph.to_dense() @ x
    query, key, _, feats = attn.project(captured["hidden_states"],
                                        captured["position_embeddings"])
    expected = attn.neighbour_sum(query, key, feats, mask.bool())[:, 3]
    real = mask.bool()
    torch.testing.assert_close(neighbour_sum[real], expected[real], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        model.attention_graphs(ids, layer=2)
    with pytest.raises(ValueError, match="head"):
        model.attention_graphs(ids, layer=0, head=4)
    with pytest.raises(ValueError, match="attention_type"):
        build(attention_type="standard").attention_graphs(ids)


def test_trains_with_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = build(attention_type="gin")
    torch.manual_seed(0)
    rows = torch.randint(3, 64, (16, 12)).tolist()
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    before = model.graph_parameters()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             max_steps=4, learning_rate=1e-2, report_to=[], save_strategy="no",
                             use_cpu=True, logging_steps=1)
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = model.graph_parameters()
    assert not torch.equal(before["alpha"], after["alpha"])
    assert not torch.equal(before["eps"], after["eps"])
