"""Sparse-GIN on the paths users train and serve it (issue 9): gradient checkpointing on
padded batches, deep copies, every loader, sliding windows, several adapters, TRL,
Trainer checkpoints, torch.compile, beam search, merging."""

import copy
import json
import os

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from pyg_transformer.adapters import SparseGinPeftModel, get_sparse_gin_model
from pyg_transformer.compat import check_peft_version, sparse_gin_peft_type

from test_sparse_gin import ARCHS, DECODER_KW, VOCAB, adapter_config, clone, make_model


def _padded_batch(side: str):
    ids = torch.randint(1, VOCAB, (3, 11))
    mask = torch.ones_like(ids)
    if side == "left":
        mask[0, :4], mask[1, :2] = 0, 0
    else:
        mask[0, 7:], mask[1, 9:] = 0, 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


def _perturbed(peft_model):
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".sparse_gin.sparse_gin_" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return peft_model


def _adapter_grads(arch, side, checkpointing):
    torch.manual_seed(3)
    model = make_model(arch)
    if arch == "gpt2":  # no dropout: the comparison is of the gradients, not of RNG streams
        model.config.attn_pdrop = model.config.resid_pdrop = model.config.embd_pdrop = 0.0
        model = type(model)(model.config)
    if arch == "mistral":
        model.config.sliding_window = 4
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.3))
    adapted.train()
    if checkpointing is not None:
        adapted.gradient_checkpointing_enable({"use_reentrant": checkpointing})
    ids, mask, labels = _padded_batch(side)
    adapted(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in adapted.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- recomputation
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_on_padded_batches(arch, side,
                                                                          use_reentrant):
    expected = _adapter_grads(arch, side, None)
    got = _adapter_grads(arch, side, use_reentrant)
    assert got.keys() == expected.keys() and expected
    assert all(grad.abs().sum() > 0 for name, grad in expected.items() if "lin_in" in name)
    for name, grad in expected.items():
        error = (got[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-12)
        assert error <= 1e-5, (name, float(error))


@pytest.mark.parametrize("arch", ARCHS)
def test_deepcopy_is_independent(arch):
    adapted = get_sparse_gin_model(make_model(arch), adapter_config(epsilon=0.3))
    ids, mask, labels = _padded_batch("left")
    twin = copy.deepcopy(adapted)
    with torch.no_grad():
        before = twin(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(before, adapted(input_ids=ids, attention_mask=mask).logits)
        for param in adapted.parameters():
            if param.requires_grad:
                param.add_(1.0)
        assert torch.equal(twin(input_ids=ids, attention_mask=mask).logits, before)
        assert not torch.equal(adapted(input_ids=ids, attention_mask=mask).logits, before)
    twin.train()
    twin(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all(p.grad is None for p in adapted.parameters())
    assert all(p.grad is not None for p in twin.parameters() if p.requires_grad)
    twin.unload()  # the copy's hooks are its own: the original still runs its adapter
    with torch.no_grad():
        assert not torch.equal(adapted(input_ids=ids, attention_mask=mask).logits, before)


# --------------------------------------------------------------------------- loaders
@pytest.fixture(params=ARCHS)
def saved(request, tmp_path):
    """An adapter with random weights saved beside its base model, and its logits."""
    base = make_model(request.param)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base.save_pretrained(base_dir)
    adapted = _perturbed(get_sparse_gin_model(base, adapter_config(epsilon=0.3)))
    adapted.peft_config["default"].base_model_name_or_path = str(base_dir)
    adapted.save_pretrained(adapter_dir)
    ids, mask, _ = _padded_batch("left")
    with torch.no_grad():
        logits = adapted(input_ids=ids, attention_mask=mask).logits
    return base_dir, adapter_dir, (ids, mask), logits


def _transformers_load_adapter(base_dir, adapter_dir):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.load_adapter(adapter_dir)
    return model


LOADERS = {
    "get_sparse_gin_model's SparseGinPeftModel.from_pretrained": lambda b, a: (
        SparseGinPeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(b), a)),
    "peft.PeftModel.from_pretrained": lambda b, a: peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(b), a),
    "peft.AutoPeftModelForCausalLM": lambda b, a: peft.AutoPeftModelForCausalLM.from_pretrained(a),
    "transformers load_adapter": _transformers_load_adapter,
    "transformers from_pretrained(adapter folder)": lambda b, a: (
        AutoModelForCausalLM.from_pretrained(a)),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_gives_bit_identical_logits(loader, saved):
    base_dir, adapter_dir, (ids, mask), expected = saved
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["peft_type"] == "SPARSE_GIN"
    model = LOADERS[loader](base_dir, adapter_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)


@pytest.mark.parametrize("saved", ["llama"], indirect=True)  # the wide base is a Llama
@pytest.mark.parametrize("loader", ["get_sparse_gin_model's SparseGinPeftModel.from_pretrained",
                                    "peft.PeftModel.from_pretrained"])
def test_mismatched_base_is_refused_naming_both_shapes(loader, saved, tmp_path):
    _, adapter_dir, _, _ = saved
    wide_dir = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(**{**DECODER_KW, "hidden_size": 64})).save_pretrained(wide_dir)
    with pytest.raises(ValueError, match=r"has shape \(16, 32\) in the checkpoint but \(16, 64\) "
                                         r"in this model: the adapter was saved for a base model "
                                         r"with hidden_size=32"):
        LOADERS[loader](wide_dir, adapter_dir)


# --------------------------------------------------------------------------- several adapters
def test_add_set_delete_adapter_round_trip(tmp_path):
    base = make_model("llama")
    twin = clone(base)
    peft_model = _perturbed(peft.get_peft_model(base, adapter_config(epsilon=0.3)))
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        first = peft_model(input_ids=ids).logits
    peft_model.add_adapter("small", adapter_config(hidden_dim=8, epsilon=0.5))
    assert peft_model.active_adapters == ["default"]
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=ids).logits, first)  # only the active one runs
        peft_model.set_adapter("small")
        second = peft_model(input_ids=ids).logits
    assert not torch.equal(second, first)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".small" in n for n in trainable)
    with pytest.raises(ValueError, match="nonexistent"):
        peft_model.set_adapter("nonexistent")
    peft_model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "small"} <= set(
        os.listdir(tmp_path))  # peft's layout: other adapters in sub-folders
    reloaded = peft.PeftModel.from_pretrained(twin, tmp_path)
    reloaded.load_adapter(tmp_path / "small", adapter_name="small")
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, first)
        reloaded.set_adapter("small")
        assert torch.equal(reloaded(input_ids=ids).logits, second)
    peft_model.set_adapter("default")
    peft_model.delete_adapter("small")
    assert list(peft_model.peft_config) == ["default"]
    assert not any(".small" in k for k in peft_model.state_dict())
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=ids).logits, first)


def test_merging_is_refused_clearly():
    peft_model = get_sparse_gin_model(make_model("llama"), adapter_config())
    for merge in (peft_model.merge_and_unload, peft_model.merge_adapter):
        with pytest.raises(ValueError, match="cannot be merged into the base weights"):
            merge()


def test_peft_type_member_and_version_guard():
    member = sparse_gin_peft_type()
    assert member is peft.PeftType.SPARSE_GIN and member.value == "SPARSE_GIN"
    assert peft.PeftType("SPARSE_GIN") is member and isinstance(member, str)
    check_peft_version()  # the installed (locked) peft is supported
    with pytest.raises(ImportError, match=r"peft 0.30.0 is outside the supported range"):
        check_peft_version("0.30.0")


# --------------------------------------------------------------------------- windows, cache
def test_sliding_window_graph_and_cache_equal_no_cache():
    model = make_model("mistral")
    window = 4
    model.config.sliding_window = window
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.2))
    ids = torch.randint(1, VOCAB, (2, 3))
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with torch.no_grad():
        adapted(input_ids=torch.randint(1, VOCAB, (1, 12)))
        for layer in adapted.base_model.adapter_layers.values():
            graph = layer.last_graph  # only the keys the window lets a query see
            assert int((graph.edge_index[1] - graph.edge_index[0]).max()) == window - 1
    kwargs = dict(attention_mask=mask, max_new_tokens=2 * window + 1, do_sample=False,
                  pad_token_id=0)
    cached = adapted.generate(input_ids=ids, **kwargs)
    assert torch.equal(cached, adapted.generate(input_ids=ids, use_cache=False, **kwargs))


def test_beam_search_with_cache_equals_without():
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config(epsilon=0.3))
    ids = torch.randint(1, VOCAB, (2, 5))
    kwargs = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6, do_sample=False)
    assert torch.equal(adapted.generate(input_ids=ids, **kwargs),
                       adapted.generate(input_ids=ids, use_cache=False, **kwargs))


# --------------------------------------------------------------------------- training
def test_trainer_checkpoints_hold_only_the_adapter(tmp_path):
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config(epsilon=0.3))
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (4, 8))]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                             save_strategy="steps", save_steps=2, report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=adapted, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    for folder in (tmp_path / "checkpoint-2", tmp_path / "final"):
        files = set(os.listdir(folder))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert not files & {"model.safetensors", "pytorch_model.bin"}, files
        keys = load_file(folder / "adapter_model.safetensors")
        assert keys and all(".sparse_gin.sparse_gin_" in k for k in keys)


def test_trl_sft_trainer_with_gradient_checkpointing(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["Tom has 3 apples.", "A box holds 12 pens and 4 more.", "Sara reads 7 pages."] * 4
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=3,
                     learning_rate=1e-2, gradient_checkpointing=True, report_to=[], use_cpu=True,
                     save_strategy="no", logging_steps=1, disable_tqdm=True)
    assert args.gradient_checkpointing
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_dict({"text": texts}),
                         peft_config=adapter_config(epsilon=0.3))
    assert isinstance(trainer.model, peft.PeftModel)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    after = dict(trainer.model.named_parameters())
    assert before and any(not torch.equal(after[n], p) for n, p in before.items())


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_matches_and_trains(backend):
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config(epsilon=0.3))
    ids, mask, labels = _padded_batch("right")
    with torch.no_grad():
        expected = adapted(input_ids=ids, attention_mask=mask).logits
    compiled = torch.compile(adapted, backend=backend)
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-4)
    compiled.train()
    compiled(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all(p.grad is not None for p in adapted.parameters() if p.requires_grad)
