"""Evaluation helpers (issue 5): perplexity, exact match by batched greedy generation,
log-history summaries."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from pyg_transformer.data import train_char_tokenizer
from pyg_transformer.training import (
    PromptCompletionCollator,
    best_eval_loss,
    encode_dataset,
    exact_match_accuracy,
    generalization_gap,
    generate_completions,
    loss_curves,
    perplexity,
)

# prompts of different lengths, so a batch needs left padding
PAIRS = [
    {"prompt": "Q: 3+4?\nA:", "completion": " #### 7"},
    {"prompt": "Q: 10+25?\nA:", "completion": " #### 35"},
    {"prompt": "Q: 100+1?\nA:", "completion": " #### 101"},
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny char-level Llama trained with Trainer on PAIRS (its exact outcome depends on
    the optimiser defaults of the transformers release, so no test relies on it)."""
    torch.manual_seed(0)
    tok = train_char_tokenizer([p["prompt"] + p["completion"] for p in PAIRS])
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    collator = PromptCompletionCollator(tok)
    data = encode_dataset(Dataset.from_list(PAIRS), collator)
    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("run")), max_steps=60,
        per_device_train_batch_size=3, learning_rate=1e-2, lr_scheduler_type="constant",
        logging_steps=10, eval_strategy="steps", eval_steps=20, save_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                      data_collator=collator)
    trainer.train()
    return model, tok, trainer


def lookup_llama(tok, successors: dict[str, str]) -> LlamaForCausalLM:
    """A real Llama whose greedy next token depends on the current token alone.

    Embeddings are one-hot, attention and MLP outputs are zero, so the final hidden state
    of token ``t`` is (a multiple of) ``e_t`` and the LM head row ``succ(t)`` is the only one
    that reads it: greedy decoding follows the chain ``successors``, whatever the padding.
    """
    ids = tok.convert_tokens_to_ids
    vocab = len(tok)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for token, successor in successors.items():
            model.lm_head.weight[ids(successor), ids(token)] = 1.0
    return model.eval()


def test_exact_match_scores_greedy_completions_that_stop_at_eos():
    eos = "<|eot_id|>"
    prompts = ["Q: 3+4? A", "Q: 30+5? Bb", "Q: 100+2? C", "Q: loop? L"]
    tok = train_char_tokenizer(prompts + ["0123456789"])
    # answers 7, 35 and 102, each followed by EOS; "L" repeats forever (never emits EOS)
    model = lookup_llama(tok, {"A": "7", "7": eos, "b": "3", "3": "5", "5": eos,
                               "C": "1", "1": "0", "0": "2", "2": eos, "L": "L"})
    references = ["#### 7", "#### 35", "#### 102", "#### 0"]
    result = exact_match_accuracy(model, tok, prompts, references, max_new_tokens=6,
                                  batch_size=4)
    # generation stops right after each answer although the batch runs on, the EOS and
    # the padding after it are not part of the prediction, and a row without EOS is
    # cut at max_new_tokens
    assert result["predictions"] == ["7", "35", "102", "LLLLLL"]
    assert result["answers"] == ["7", "35", "102", None]
    assert result["exact_match"] == 0.75
    one_by_one = [exact_match_accuracy(model, tok, [p], [r], max_new_tokens=6)["predictions"]
                  for p, r in zip(prompts, references)]
    assert sum(one_by_one, []) == result["predictions"]
    wrong = exact_match_accuracy(model, tok, prompts[:3], ["#### 8", "The answer is 35.", "5"],
                                 max_new_tokens=6)
    assert wrong["exact_match"] == pytest.approx(1 / 3)


def test_batched_left_padded_generation_equals_one_by_one(trained):
    model, tok, _ = trained
    model.train()
    prompts = [p["prompt"] for p in PAIRS] + ["Q: 3+5?\nA:"]
    batched = generate_completions(model, tok, prompts, max_new_tokens=8, batch_size=4)
    single = [generate_completions(model, tok, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert model.training  # the mode is restored


def test_perplexity_and_log_history(trained):
    _, tok, trainer = trained
    history = trainer.state.log_history
    curves = loss_curves(history)
    assert [s for s, _ in curves["train"]] == [10, 20, 30, 40, 50, 60]
    assert [s for s, _ in curves["eval"]] == [20, 40, 60]
    best = best_eval_loss(history)
    assert best == min(loss for _, loss in curves["eval"])
    assert perplexity(best) == pytest.approx(math.exp(best))
    final = trainer.evaluate()["eval_loss"]
    assert perplexity(final) == pytest.approx(math.exp(final))
    assert max(final, *(loss for _, loss in curves["eval"])) < math.log(len(tok))  # < chance
    assert generalization_gap(history) == pytest.approx(curves["eval"][-1][1] -
                                                         curves["train"][-1][1])


def test_summaries_on_handwritten_histories_and_errors():
    history = [{"loss": 2.0, "step": 5}, {"loss": 1.5, "step": 10}, {"eval_loss": 1.9, "step": 10},
               {"loss": 1.0, "step": 15}, {"train_loss": 1.4, "step": 15}]
    assert generalization_gap(history) == pytest.approx(0.4)  # 1.9 - 1.5 at step 10
    assert best_eval_loss(history) == 1.9
    assert perplexity(0.0) == 1.0 and perplexity(1e6) == math.inf
    with pytest.raises(ValueError, match="NaN"):
        perplexity(float("nan"))
    with pytest.raises(ValueError, match=">= 0"):
        perplexity(-1.0)
    with pytest.raises(ValueError, match="no eval_loss"):
        best_eval_loss([{"loss": 1.0, "step": 1}])
    with pytest.raises(ValueError, match="no eval_loss"):
        generalization_gap([{"loss": 1.0, "step": 1}])
    with pytest.raises(ValueError, match="no training loss"):
        generalization_gap([{"eval_loss": 1.0, "step": 1}])


def test_generation_argument_errors(trained):
    model, tok, _ = trained
    with pytest.raises(TypeError, match="single str"):
        generate_completions(model, tok, "Q: 1+1?")
    with pytest.raises(ValueError, match="batch_size"):
        generate_completions(model, tok, ["Q"], batch_size=0)
    with pytest.raises(ValueError, match="2 prompts but 1 references"):
        exact_match_accuracy(model, tok, ["a", "b"], ["#### 1"])
