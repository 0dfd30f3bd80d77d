"""Sparse-GIN adapter (issue 4): persistence, peft integration, LoRA matching, Trainer."""

import json
import os

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from pyg_transformer.adapters import (
    SparseGinConfig,
    SparseGinModel,
    get_sparse_gin_model,
)
from pyg_transformer.training import GraphParameterCallback

from test_sparse_gin import VOCAB, adapter_config, clone, make_model


def _perturb(adapted):
    """Random adapter weights so a round trip cannot pass by re-initialisation."""
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if name.startswith("sparse_gin_layers."):
                param.add_(torch.randn_like(param) * 0.1)


@pytest.mark.parametrize("gnn_type", ["gin", "pna"])
def test_save_load_round_trip_our_api(tmp_path, gnn_type):
    model = make_model("llama")
    twin = clone(model)
    adapted = get_sparse_gin_model(model, adapter_config(gnn_type=gnn_type, epsilon=0.4))
    _perturb(adapted)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        expected = adapted(ids).logits
    adapted.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SPARSE_GIN" and saved["gnn_type"] == gnn_type
    keys = list(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys and all(k.startswith("base_model.sparse_gin_layers.") for k in keys)
    assert not any(".default." in k for k in keys)
    loaded = SparseGinModel.from_pretrained(twin, tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    trainable = SparseGinModel.from_pretrained(loaded.unload(), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_load_rejects_mismatched_weights(tmp_path):
    model = make_model("llama")
    twin = clone(model)
    get_sparse_gin_model(model, adapter_config(hidden_dim=8)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["hidden_dim"] = 12
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="size|shape|match"):
        SparseGinModel.from_pretrained(twin, tmp_path)


def test_peft_get_peft_model_and_from_pretrained(tmp_path):
    model = make_model("llama")
    twin_a, twin_b = clone(model), clone(model)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        reference = model(ids).logits
    peft_model = peft.get_peft_model(model, adapter_config(epsilon=0.4))
    assert isinstance(peft_model.base_model, SparseGinModel)
    _perturb(peft_model.base_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert 0 < trainable < total
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        assert not torch.allclose(expected, reference)
        with peft_model.disable_adapter():
            assert torch.equal(peft_model(input_ids=ids).logits, reference)
    peft_dir, ours_dir = tmp_path / "peft", tmp_path / "ours"
    peft_model.save_pretrained(peft_dir)
    reloaded = peft.PeftModel.from_pretrained(twin_a, peft_dir)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
    # our API reads peft's checkpoint and peft reads ours
    ours = SparseGinModel.from_pretrained(reloaded.unload(), peft_dir)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, expected)
    ours.save_pretrained(ours_dir)
    assert sorted(load_file(ours_dir / "adapter_model.safetensors")) == sorted(
        load_file(peft_dir / "adapter_model.safetensors")
    )
    again = peft.PeftModel.from_pretrained(twin_b, ours_dir)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, expected)
    assert isinstance(peft.PeftConfig.from_pretrained(ours_dir), SparseGinConfig)


@pytest.mark.parametrize("gnn_type", ["gin", "pna"])
def test_match_lora_parameter_count(gnn_type):
    model = make_model("llama")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    config = SparseGinConfig.match_lora(model, lora, epsilon=0.5, gnn_type=gnn_type)
    assert config.epsilon == 0.5 and config.gnn_type == gnn_type
    lora_count = peft.get_peft_model(clone(model), lora).get_nb_trainable_parameters()[0]

    def count(hidden_dim):
        adapted = get_sparse_gin_model(
            clone(model), SparseGinConfig(hidden_dim=hidden_dim, gnn_type=gnn_type)
        )
        return adapted.get_nb_trainable_parameters()[0]

    best = abs(count(config.hidden_dim) - lora_count)
    assert best <= abs(count(config.hidden_dim - 1) - lora_count)
    assert best <= abs(count(config.hidden_dim + 1) - lora_count)
    assert best < 0.1 * lora_count


def test_trainer_gradient_checkpointing_bf16_logs_lambda(tmp_path):
    model = make_model("llama")
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.4, scale_init="linear"))
    lambdas = adapted.graph_parameters()["lambda"].clone()
    adapter_before = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (8, 10))]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=5e-2,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=True,
        activation_checkpointing=True, disable_tqdm=True,
    )
    trainer = Trainer(model=adapted, args=args, train_dataset=data, callbacks=[GraphParameterCallback()])
    trainer.train()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("lambda/layer_0" in e and "lambda/layer_1" in e for e in logged)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)
    after = adapted.graph_parameters()["lambda"]
    assert not torch.equal(after, lambdas)
    assert logged[-1]["lambda/layer_1"] == pytest.approx(float(after[1]))
    for name, param in adapted.named_parameters():
        if name in adapter_before and name.endswith("lin_in.weight"):  # every layer trained
            assert not torch.equal(param, adapter_before[name]), name
    for key, value in model.state_dict().items():
        assert torch.equal(value, base_state[key]), key


def test_reentrant_checkpointing_reaches_adapters():
    model = make_model("llama")
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.4))
    adapted.train()
    adapted.gradient_checkpointing_enable({"use_reentrant": True})
    ids = torch.randint(0, VOCAB, (2, 8))
    adapted(ids, labels=ids).loss.backward()
    for name, param in adapted.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name


def test_non_detached_adjacency_trains():
    model = make_model("llama")
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.3, detach_adjacency=False))
    ids = torch.randint(0, VOCAB, (2, 8))
    adapted(ids, labels=ids).loss.backward()
    grads = [p.grad for p in adapted.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
