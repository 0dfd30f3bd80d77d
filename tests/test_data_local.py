"""load_local_dataset: formats, column contract, splits, clear errors (issue 5)."""

import json

import pytest
from datasets import Dataset

from pyg_transformer.data import load_local_dataset, train_char_tokenizer

PAIRS = [{"prompt": f"Q{i}:", "completion": f" A{i}", "extra": i} for i in range(10)]


def write(path, rows, fmt):
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "csv":
        Dataset.from_list(rows).to_csv(str(path), index=False)
    elif fmt == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_every_format_loads_and_splits(tmp_path, fmt):
    path = write(tmp_path / f"data.{fmt}", PAIRS, fmt)
    data = load_local_dataset(path, test_fraction=0.2, seed=0)
    assert set(data) == {"train", "test"}
    assert len(data["train"]) == 8 and len(data["test"]) == 2
    rows = list(data["train"]) + list(data["test"])
    assert sorted(r["extra"] for r in rows) == list(range(10))   # own columns are kept
    for r in rows:
        assert r["prompt"] == f"Q{r['extra']}:" and r["completion"] == f" A{r['extra']}"
        assert r["text"] == r["prompt"] + r["completion"]
    again = load_local_dataset(path, test_fraction=0.2, seed=0)
    assert list(again["test"]["extra"]) == list(data["test"]["extra"])


def test_question_answer_columns_are_formatted(tmp_path):
    rows = [{"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5\n#### 5"}] * 3
    path = write(tmp_path / "qa.jsonl", rows, "jsonl")
    data = load_local_dataset(path, test_fraction=0.0)
    assert list(data) == ["train"]
    row = data["train"][0]
    assert row["prompt"] == "Question: What is 2+3?\nAnswer:"
    assert row["completion"] == " 2+3 = 5\n#### 5"

    tokenizer = train_char_tokenizer(["abc"])
    tokenizer.chat_template = ("{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
                               "{% if add_generation_prompt %}>{% endif %}")
    chat = load_local_dataset(path, test_fraction=0.0, tokenizer=tokenizer)["train"][0]
    assert chat["prompt"] == "[What is 2+3?]>" and chat["completion"] == "2+3 = 5\n#### 5"


def test_pretrain_uses_text_or_pairs(tmp_path):
    text_path = write(tmp_path / "t.json", [{"text": "MKV"}, {"text": "PLI"}], "json")
    data = load_local_dataset(text_path, task="pretrain", test_fraction=0.5)
    assert sorted([*data["train"]["text"], *data["test"]["text"]]) == ["MKV", "PLI"]
    pair_path = write(tmp_path / "p.json", PAIRS[:2], "json")
    data = load_local_dataset(pair_path, task="pretrain", test_fraction=0.0)
    assert list(data["train"]["text"]) == ["Q0: A0", "Q1: A1"]
    with pytest.raises(ValueError, match="'prompt' and 'completion'"):
        load_local_dataset(text_path, task="finetune")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_local_dataset(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="folder"):
        load_local_dataset(tmp_path)
    bad_suffix = tmp_path / "data.txt"
    bad_suffix.write_text("hello")
    with pytest.raises(ValueError, match=r"unknown data format '\.txt'"):
        load_local_dataset(bad_suffix)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_local_dataset(empty)
    wrong = write(tmp_path / "wrong.jsonl", [{"input": "a", "output": "b"}] * 2, "jsonl")
    with pytest.raises(ValueError, match=r"needs the columns.*it has \['input', 'output'\]"):
        load_local_dataset(wrong)
    numbers = write(tmp_path / "num.jsonl", [{"prompt": "a", "completion": 1}] * 2, "jsonl")
    with pytest.raises(ValueError, match="column 'completion' must hold strings, row 0"):
        load_local_dataset(numbers)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="could not read"):
        load_local_dataset(broken)
    good = write(tmp_path / "good.jsonl", PAIRS[:1], "jsonl")
    with pytest.raises(ValueError, match="at least 2 rows"):
        load_local_dataset(good, test_fraction=0.5)
    with pytest.raises(ValueError, match="task must be one of"):
        load_local_dataset(good, task="classify")
    with pytest.raises(ValueError, match="test_fraction"):
        load_local_dataset(good, test_fraction=1.0)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_a_file_without_rows_is_refused(tmp_path, fmt):
    path = tmp_path / f"none.{fmt}"
    if fmt == "csv":
        path.write_text("prompt,completion\n")  # a header only
    elif fmt == "parquet":
        Dataset.from_dict({"prompt": [], "completion": []}).to_parquet(str(path))
    else:
        path.write_text("[]" if fmt == "json" else "\n")
    with pytest.raises(ValueError, match=f"data file has no rows: '.*none.{fmt}'"):
        load_local_dataset(path)


def test_nothing_to_train_on_is_refused(tmp_path):
    blank = write(tmp_path / "blank.jsonl", [{"prompt": "", "completion": " "}] * 4, "jsonl")
    with pytest.raises(ValueError, match=r"'completion' of '.*blank.jsonl' is empty in every"):
        load_local_dataset(blank)
    with pytest.raises(ValueError, match=r"'prompt' and 'completion' of .* are empty in every"):
        load_local_dataset(blank, task="pretrain")
    texts = write(tmp_path / "texts.jsonl", [{"text": ""}] * 4, "jsonl")
    with pytest.raises(ValueError, match=r"'text' of '.*texts.jsonl' is empty in every row"):
        load_local_dataset(texts, task="pretrain")
    answers = write(tmp_path / "qa.jsonl", [{"question": "Why?", "answer": ""}] * 4, "jsonl")
    with pytest.raises(ValueError, match=r"'answer' of '.*qa.jsonl' is empty in every row"):
        load_local_dataset(answers)
    some = write(tmp_path / "some.jsonl", [{"prompt": "", "completion": ""},
                                           {"prompt": "", "completion": "x"}], "jsonl")
    assert len(load_local_dataset(some, test_fraction=0)["train"]) == 2  # one row is enough
