"""GraphParameterCallback on a real Trainer (issue 5): per-layer graph scalars every log step."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from pyg_transformer.data import train_char_tokenizer
from pyg_transformer.training import (
    GraphParameterCallback,
    PromptCompletionCollator,
    encode_dataset,
    find_graph_parameters,
    graph_scalars,
)

PAIRS = [{"prompt": f"Q: {a}+{b}?\nA:", "completion": f" #### {a + b}"}
         for a, b in [(1, 2), (3, 4), (10, 5), (7, 7)]]


class TinyGraphLlama(LlamaForCausalLM):
    """Test data: a tiny real Llama exposing trained per-layer scalars in the house-rules
    ``graph_parameters`` format ("lambda": [L], "eps": [L, H])."""

    def graph_parameters(self):
        layers = self.model.layers
        lam = torch.stack([layer.input_layernorm.weight[0] for layer in layers])
        eps = torch.stack([layer.post_attention_layernorm.weight[:4] for layer in layers])
        return {"lambda": lam.detach().cpu(), "eps": eps.detach().cpu()}


def tiny(cls, tok, layers=3):
    return cls(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))


def make_trainer(model, tok, tmp_path, callback, steps=6):
    collator = PromptCompletionCollator(tok)
    data = encode_dataset(Dataset.from_list(PAIRS), collator)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=2, eval_strategy="steps", eval_steps=2,
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True)
    return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                   data_collator=collator, callbacks=[callback])


def test_logs_graph_scalars_every_logging_step(tmp_path):
    tok = train_char_tokenizer([p["prompt"] + p["completion"] for p in PAIRS])
    model = tiny(TinyGraphLlama, tok)
    callback = GraphParameterCallback()
    trainer = make_trainer(model, tok, tmp_path, callback)
    trainer.train()

    keys = {f"{name}/layer_{l}" for name in ("lambda", "eps") for l in range(3)}
    assert [h["step"] for h in callback.history] == [0, 2, 4, 6]
    assert all(set(h) == keys | {"step"} for h in callback.history)
    # the last entry is the trained model's current values (eps: mean over heads)
    final = model.graph_parameters()
    assert callback.history[-1]["lambda/layer_1"] == pytest.approx(float(final["lambda"][1]))
    assert callback.history[-1]["eps/layer_2"] == pytest.approx(float(final["eps"][2].mean()))
    assert callback.history[0]["lambda/layer_0"] == 1.0  # RMSNorm init
    assert callback.history[-1]["lambda/layer_0"] != 1.0  # it trained
    # every training and evaluation log carries the scalars (saved in trainer_state.json)
    logged = [e for e in trainer.state.log_history if "loss" in e or "eval_loss" in e]
    assert len(logged) == 6
    for entry in logged:
        match = next(h for h in callback.history if h["step"] == entry["step"])
        assert {k: entry[k] for k in keys} == {k: match[k] for k in keys}


def test_model_without_graph_parameters(tmp_path):
    tok = train_char_tokenizer([p["prompt"] + p["completion"] for p in PAIRS])
    trainer = make_trainer(tiny(LlamaForCausalLM, tok, 1), tok, tmp_path,
                           GraphParameterCallback(), steps=2)
    with pytest.raises(ValueError, match="exposes no graph_parameters"):
        trainer.train()
    callback = GraphParameterCallback(require=False)
    make_trainer(tiny(LlamaForCausalLM, tok, 1), tok, tmp_path, callback, steps=2).train()
    assert callback.history == []


def test_found_through_peft_and_ddp_style_wrappers():
    tok = train_char_tokenizer(["ab"])
    model = tiny(TinyGraphLlama, tok, 2)
    expected = model.graph_parameters()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))

    class Wrapper(torch.nn.Module):  # how DDP / accelerate hold the model
        def __init__(self, module):
            super().__init__()
            self.module = module

    for wrapped in (peft_model, Wrapper(peft_model), Wrapper(model)):
        found = find_graph_parameters(wrapped)
        assert found.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(found[key], expected[key])
    assert find_graph_parameters(tiny(LlamaForCausalLM, tok, 1)) is None


def test_with_graph_llama_and_sparse_gin(tmp_path):
    """The library's own graph models and adapters (issues 3 and 4) log through it."""
    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model
    from pyg_transformer.models import GraphLlamaConfig, GraphLlamaForCausalLM

    tok = train_char_tokenizer([p["prompt"] + p["completion"] for p in PAIRS])
    kwargs = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    gin = GraphLlamaForCausalLM(GraphLlamaConfig(attention_type="gin", **kwargs))
    callback = GraphParameterCallback()
    make_trainer(gin, tok, tmp_path, callback, steps=2).train()
    assert {"alpha/layer_0", "alpha/layer_1", "eps/layer_1"} <= set(callback.history[-1])
    assert callback.history[0]["alpha/layer_0"] == pytest.approx(1.0)

    adapted = get_sparse_gin_model(LlamaForCausalLM(LlamaConfig(**kwargs)),
                                   SparseGinConfig(hidden_dim=16))
    callback = GraphParameterCallback()
    make_trainer(adapted, tok, tmp_path, callback, steps=2).train()
    assert callback.history[0]["lambda/layer_0"] == 0.0  # linear init over depth
    assert callback.history[-1]["lambda/layer_1"] != callback.history[0]["lambda/layer_1"]

    standard = GraphLlamaForCausalLM(GraphLlamaConfig(attention_type="standard", **kwargs))
    callback = GraphParameterCallback()
    make_trainer(standard, tok, tmp_path, callback, steps=2).train()
    assert callback.history == []


def test_graph_scalars_shapes():
    scalars = graph_scalars({"alpha": torch.tensor([1.0, 2.0]),
                             "eps": torch.tensor([[0.0, 2.0], [1.0, 1.0]]),
                             "tau": torch.tensor(0.5)})
    assert scalars == {"alpha/layer_0": 1.0, "alpha/layer_1": 2.0, "eps/layer_0": 1.0,
                       "eps/layer_1": 1.0, "tau": 0.5}
