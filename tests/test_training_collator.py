"""Prompt-masked causal-LM collator (issue 5): loss on completion + EOS only, any tokenizer."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pyg_transformer.data import train_char_tokenizer
from pyg_transformer.training import (
    IGNORE_INDEX,
    PromptCompletionCollator,
    encode_dataset,
    encode_prompt,
)

PAIRS = [
    {"prompt": "Question: 12+30?\nAnswer:", "completion": " 42"},
    {"prompt": "Question: 1+1?\nAnswer:", "completion": " The sum is 2.\n#### 2"},
]


def char_tokenizer():
    return train_char_tokenizer([p["prompt"] + p["completion"] for p in PAIRS])


def bpe_tokenizer():
    """A tiny BPE tokenizer trained offline: no BOS, no pad token, a chat template."""
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator([p["prompt"] + p["completion"] for p in PAIRS] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    return tok


@pytest.fixture(params=["char", "bpe"])
def tokenizer(request):
    return char_tokenizer() if request.param == "char" else bpe_tokenizer()


@pytest.mark.parametrize("side", ["right", "left"])
def test_labels_mask_prompt_and_padding(tokenizer, side):
    collator = PromptCompletionCollator(tokenizer, padding_side=side)
    batch = collator(PAIRS)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    lengths = []
    for row, pair in enumerate(PAIRS):
        prompt_ids = encode_prompt(tokenizer, pair["prompt"])
        completion_ids = tokenizer(pair["completion"], add_special_tokens=False)["input_ids"]
        expected_ids = prompt_ids + completion_ids + [tokenizer.eos_token_id]
        expected_labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [
            tokenizer.eos_token_id]
        mask = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == expected_ids
        assert batch["labels"][row][mask].tolist() == expected_labels
        assert (batch["labels"][row][~mask] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row][~mask] == collator.pad_token_id).all()
        # padding sits on the requested side
        positions = mask.nonzero().flatten()
        n = len(expected_ids)
        lengths.append(n)
        first = 0 if side == "right" else mask.numel() - n
        assert positions.tolist() == list(range(first, first + n))
    assert batch["input_ids"].shape == (2, max(lengths))


def test_pad_falls_back_to_eos_and_labels_do_not_depend_on_it():
    tok = bpe_tokenizer()
    assert tok.pad_token_id is None
    collator = PromptCompletionCollator(tok)
    batch = collator(PAIRS)
    assert collator.pad_token_id == tok.eos_token_id
    # the EOS that ends each completion is labelled even though it equals the pad id
    for row in range(2):
        last = int(batch["attention_mask"][row].sum()) - 1
        assert batch["labels"][row, last] == tok.eos_token_id


def test_loss_is_cross_entropy_on_completion_tokens_only():
    tok = char_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id)).eval()
    batch = PromptCompletionCollator(tok)(PAIRS)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(model(**batch).loss, manual)
    n_completion = sum(len(tok(p["completion"], add_special_tokens=False)["input_ids"]) + 1
                       for p in PAIRS)
    assert int((targets != IGNORE_INDEX).sum()) == n_completion
    # changing the prompt-only labels cannot matter: they are masked
    prompt_len = len(encode_prompt(tok, PAIRS[0]["prompt"]))
    assert (batch["labels"][0, :prompt_len] == IGNORE_INDEX).all()


def test_pretokenized_dataset_matches_raw_features(tokenizer):
    collator = PromptCompletionCollator(tokenizer, pad_to_multiple_of=8)
    encoded = encode_dataset(Dataset.from_list(PAIRS), collator)
    assert encoded.column_names == ["input_ids", "labels"]
    from_dataset = collator(list(encoded))
    from_raw = collator(PAIRS)
    for key in from_raw:
        torch.testing.assert_close(from_dataset[key], from_raw[key])
    assert from_raw["input_ids"].shape[1] % 8 == 0


def test_eos_is_not_doubled(tokenizer):
    collator = PromptCompletionCollator(tokenizer)
    plain = collator.encode("Q:", " 42")
    with_eos = collator.encode("Q:", " 42" + tokenizer.eos_token)
    assert plain == with_eos
    assert plain["input_ids"].count(tokenizer.eos_token_id) == 1


def test_text_features_train_on_every_token():
    tok = char_tokenizer()
    collator = PromptCompletionCollator(tok)
    batch = collator([{"text": "12+30"}])
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == "12+30"
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] + ids[1:]
    text_ds = encode_dataset(Dataset.from_list([{"text": "12+30", "x": 1}]), collator,
                             text_column="text")
    assert text_ds[0]["input_ids"] == ids


def test_truncation_and_errors():
    tok = char_tokenizer()
    prompt_len = len(encode_prompt(tok, PAIRS[0]["prompt"]))
    batch = PromptCompletionCollator(tok, max_length=prompt_len + 2)(PAIRS[:1])
    assert batch["input_ids"].shape == (1, prompt_len + 2)
    assert (batch["labels"][0, prompt_len:] != IGNORE_INDEX).all()
    assert batch["labels"][0, -1] != tok.eos_token_id  # the end was cut
    with pytest.raises(ValueError, match="leaves no completion token"):
        PromptCompletionCollator(tok, max_length=prompt_len)(PAIRS[:1])
    with pytest.raises(ValueError, match="padding_side"):
        PromptCompletionCollator(tok, padding_side="middle")
    with pytest.raises(ValueError, match="max_length"):
        PromptCompletionCollator(tok, max_length=0)
    with pytest.raises(ValueError, match="got keys"):
        PromptCompletionCollator(tok)([{"question": "q"}])
    with pytest.raises(ValueError, match="empty batch"):
        PromptCompletionCollator(tok)([])
    with pytest.raises(TypeError, match="must be str"):
        PromptCompletionCollator(tok).encode("q", 5)
    with pytest.raises(ValueError, match="text_column"):
        encode_dataset(Dataset.from_list(PAIRS), PromptCompletionCollator(tok), text_column="t")
    no_eos = train_char_tokenizer(["ab"])
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        PromptCompletionCollator(no_eos)
