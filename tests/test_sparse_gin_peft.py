"""Sparse-GIN adapter (issue 4): persistence, peft integration, LoRA matching, Trainer."""

import json
import os
import re

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from pyg_transformer.adapters import (
    SparseGinConfig,
    SparseGinModel,
    SparseGinPeftModel,
    get_sparse_gin_model,
)
from pyg_transformer.training import GraphParameterCallback

from test_sparse_gin import DECODER_KW, VOCAB, adapter_config, clone, make_model


def _perturb(adapted):
    """Random adapter weights so a round trip cannot pass by re-initialisation."""
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if ".sparse_gin.sparse_gin_" in name:
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
    pattern = r"base_model\.model\.model\.layers\.\d\.sparse_gin\.sparse_gin_"
    assert keys and all(re.match(pattern, k) for k in keys)
    assert not any(".default." in k for k in keys)
    loaded = SparseGinPeftModel.from_pretrained(twin, tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    trainable = SparseGinPeftModel.from_pretrained(loaded.unload(), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_load_rejects_mismatched_weights(tmp_path):
    model = make_model("llama")
    twin = clone(model)
    get_sparse_gin_model(model, adapter_config(hidden_dim=8)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["hidden_dim"] = 12
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="size|shape|match"):
        SparseGinPeftModel.from_pretrained(twin, tmp_path)


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
    ours = SparseGinPeftModel.from_pretrained(reloaded.unload(), peft_dir)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, expected)
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
        if ".sparse_gin." not in key:  # the frozen base model, not the adapters inside it
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


# --------------------------------------------------------------------------- bad input (issue 8)
def _base_snapshot(model, ids):
    """What attaching an adapter changes on a base model, to check it is left as it was."""
    with torch.no_grad():
        logits = model(ids).logits
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return dict(
        logits=logits, hooks=hooks, attn=model.config._attn_implementation,
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        peft_config="peft_config" in model.__dict__,
    )


def _assert_unchanged(model, ids, snapshot):
    now = _base_snapshot(model, ids)
    assert torch.equal(now.pop("logits"), snapshot["logits"])
    assert now == {k: v for k, v in snapshot.items() if k != "logits"}


def _loaders():
    return {
        "ours": lambda base, folder: SparseGinPeftModel.from_pretrained(base, folder),
        "peft": lambda base, folder: peft.PeftModel.from_pretrained(base, folder),
    }


@pytest.mark.parametrize("api", ["ours", "peft"])
def test_load_into_other_hidden_size_is_refused_and_base_unchanged(tmp_path, api):
    get_sparse_gin_model(make_model("llama"), adapter_config()).save_pretrained(tmp_path)
    wide = LlamaForCausalLM(LlamaConfig(**{**DECODER_KW, "hidden_size": 64})).eval()
    ids = torch.randint(0, VOCAB, (2, 7))
    snapshot = _base_snapshot(wide, ids)
    match = (r"adapter weight 'model.layers.0.sparse_gin.sparse_gin_gnn.lin_in.weight' has shape "
             r"\(16, 32\) in the checkpoint but \(16, 64\) in this model: the adapter was saved "
             r"for a base model with hidden_size=32, this LlamaForCausalLM has hidden_size=64")
    with pytest.raises(ValueError, match=match):
        _loaders()[api](wide, tmp_path)
    _assert_unchanged(wide, ids, snapshot)
    adapted = get_sparse_gin_model(wide, adapter_config())  # the base takes a fitting adapter
    assert adapted(ids).logits.shape == (2, 7, VOCAB)


@pytest.mark.parametrize("api", ["ours", "peft"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_load_into_other_number_of_layers_is_refused(tmp_path, api, num_layers):
    get_sparse_gin_model(make_model("llama"), adapter_config()).save_pretrained(tmp_path / "all")
    get_sparse_gin_model(make_model("llama"), adapter_config(target_layers=[1])).save_pretrained(
        tmp_path / "last")
    base = LlamaForCausalLM(LlamaConfig(**{**DECODER_KW, "num_hidden_layers": num_layers})).eval()
    ids = torch.randint(0, VOCAB, (2, 7))
    snapshot = _base_snapshot(base, ids)
    own = list(range(num_layers))
    layer_word = "layer" if num_layers == 1 else "layers"
    with pytest.raises(ValueError, match=(
            rf"the adapter holds weights for decoder layers \[0, 1\], but this LlamaForCausalLM "
            rf"\({num_layers} decoder {layer_word}\) adapts layers {re.escape(str(own))}")):
        _loaders()[api](base, tmp_path / "all")
    _assert_unchanged(base, ids, snapshot)
    if num_layers == 1:
        with pytest.raises(ValueError, match=r"target_layers \[1\] out of range for a model "
                                             r"with 1 decoder layers"):
            _loaders()[api](base, tmp_path / "last")
        _assert_unchanged(base, ids, snapshot)


def test_peft_load_adapter_mismatch_keeps_a_used_adapter(tmp_path):
    """Only a freshly attached adapter (inside PeftModel.from_pretrained) is rolled back;
    a mismatching load into an adapter in use raises and leaves it attached."""
    get_sparse_gin_model(make_model("llama"), adapter_config(hidden_dim=8)).save_pretrained(
        tmp_path)
    peft_model = peft.get_peft_model(make_model("llama"), adapter_config())
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    with pytest.raises(ValueError, match=r"has shape \(8,\) in the checkpoint but \(16,\) in this "
                                         r"model: the weights do not fit"):
        peft_model.load_adapter(tmp_path, adapter_name="default")
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=ids).logits, expected)


def test_save_same_config_overwrites_other_config_refused(tmp_path):
    model = make_model("llama")
    twin = clone(model)
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.4))
    adapted.save_pretrained(tmp_path)
    _perturb(adapted)
    adapted.save_pretrained(tmp_path)  # same configuration: replaced, as peft does
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in peft.get_peft_model_state_dict(adapted).items())
    files = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    other = get_sparse_gin_model(twin, adapter_config(epsilon=0.5, hidden_dim=8))
    match = (rf"{re.escape(repr(str(tmp_path)))} already holds an adapter of another "
             r"configuration \(hidden_dim: 16 there, 8 now; epsilon: 0.4 there, 0.5 now\); "
             r"pass overwrite=True")
    with pytest.raises(ValueError, match=match):
        other.save_pretrained(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == files
    other.save_pretrained(tmp_path, overwrite=True)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["hidden_dim"] == 8
    with pytest.raises(ValueError, match="save_directory must be a directory, got the file"):
        other.save_pretrained(tmp_path / "adapter_config.json")


def test_save_accepts_trainer_and_peft_keywords(tmp_path):
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config())
    _perturb(adapted)
    state = {k: v.clone() for k, v in adapted.state_dict().items()}
    expected = {k: v.clone() for k, v in peft.get_peft_model_state_dict(adapted).items()}
    _perturb(adapted)  # the given state_dict, not the current weights, is saved
    adapted.save_pretrained(tmp_path, state_dict=state, safe_serialization=True,
                            is_main_process=True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], v) for k, v in expected.items())
    adapted.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1").exists()


def test_failed_save_keeps_the_previous_adapter(tmp_path):
    """A save that fails while writing leaves the previous config and weights untouched."""
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config())
    adapted.save_pretrained(tmp_path)
    files = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    lin_out = adapted.adapter_layers[1].sparse_gin_gnn["default"].lin_out
    lin_out.to("meta")  # a weight without data: serialising it fails midway
    with pytest.raises(NotImplementedError, match="meta"):
        adapted.save_pretrained(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == files

    # the weights file cannot be replaced (a folder is in the way): the config stays the old one
    folder = tmp_path / "blocked"
    folder.mkdir()
    (folder / "adapter_model.safetensors").mkdir()
    (folder / "adapter_model.safetensors" / "keep").write_text("x")
    lin_out.to_empty(device="cpu")
    get_sparse_gin_model(make_model("llama"), adapter_config()).save_pretrained(tmp_path / "ok")
    adapter_config_text = (tmp_path / "ok" / "adapter_config.json").read_text()
    (folder / "adapter_config.json").write_text(adapter_config_text)
    with pytest.raises(OSError):
        adapted.save_pretrained(folder)
    assert (folder / "adapter_config.json").read_text() == adapter_config_text
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (folder / "adapter_model.safetensors" / "keep").read_text() == "x"
