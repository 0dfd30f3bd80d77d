"""Character / amino-acid tokenizer trained with `tokenizers` (issue 5, paper §4.1)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pyg_transformer.data import (
    AMINO_ACIDS,
    DEFAULT_SPECIAL_TOKENS,
    amino_acid_tokenizer,
    train_char_tokenizer,
)

LABELS = ["<|AH|>", "<|BS|>", "<|UNSTRUCTURED|>", "<|T|>"]
SAMPLE = "<|sequence|>PLIVPYNLPL<|/sequence|><|BS|><|UNSTRUCTURED|><|eot_id|>"


def test_character_level_with_whole_special_tokens():
    tok = train_char_tokenizer(["hello world\n", "ab"], special_tokens=["<|X|>"])
    assert tok.convert_ids_to_tokens(list(range(len(DEFAULT_SPECIAL_TOKENS)))) == list(
        DEFAULT_SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.eos_token, tok.bos_token) == (0, "<|eot_id|>",
                                                                "<|begin_of_text|>")
    ids = tok("<|X|>he lo\n")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<|begin_of_text|>", "<|X|>", "h", "e", " ",
                                              "l", "o", "\n"]
    assert tok.decode(ids, skip_special_tokens=True) == "he lo\n"
    assert tok("he", add_special_tokens=False)["input_ids"] == ids[2:4]
    # characters never seen in training are unknown
    assert tok.convert_ids_to_tokens(tok("z", add_special_tokens=False)["input_ids"]) == ["<|unk|>"]
    # vocabulary: the specials + 1 extra + the distinct characters of the corpus
    assert len(tok) == len(DEFAULT_SPECIAL_TOKENS) + 1 + len(set("hello world\nab"))


def test_amino_acid_tokenizer_matches_the_paper_format():
    tok = amino_acid_tokenizer(LABELS)
    assert len(tok) == len(DEFAULT_SPECIAL_TOKENS) + len(LABELS) + len(AMINO_ACIDS)
    tokens = tok.convert_ids_to_tokens(tok(SAMPLE)["input_ids"])
    assert tokens == ["<|begin_of_text|>", "<|sequence|>", *"PLIVPYNLPL", "<|/sequence|>",
                      "<|BS|>", "<|UNSTRUCTURED|>", "<|eot_id|>"]
    assert "<|unk|>" not in tokens


def test_saves_and_loads_with_a_model(tmp_path):
    tok = amino_acid_tokenizer(LABELS, model_max_length=64)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded_tok(SAMPLE)["input_ids"] == tok(SAMPLE)["input_ids"]
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded_tok.model_max_length == 64
    assert (loaded_tok.pad_token, loaded_tok.eos_token) == (tok.pad_token, tok.eos_token)
    ids = torch.tensor([tok(SAMPLE)["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_bad_arguments():
    with pytest.raises(TypeError, match="not a single str"):
        train_char_tokenizer("abc")
    with pytest.raises(TypeError, match="must hold strings"):
        train_char_tokenizer(["ab", 3])
    with pytest.raises(ValueError, match="non-empty"):
        train_char_tokenizer(["ab"], special_tokens=[""])
    with pytest.raises(ValueError, match="model_max_length"):
        train_char_tokenizer(["ab"], model_max_length=0)
