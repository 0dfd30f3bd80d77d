"""Final-answer extraction and exact-match scoring for GSM8K-style solutions."""

from __future__ import annotations

import re
from collections.abc import Sequence

# A number as written in GSM8K solutions: optional sign and currency, thousands commas,
# optional decimals ("-$1,234.50").
_NUMBER = re.compile(r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\$?\s*\.\d+")
_MARKER = "####"


def normalize_number(text: str) -> str | None:
    r"""Canonical string of the first number in ``text``, or ``None``.

    Removes ``$``, spaces and thousands commas, a trailing period and trailing zero
    decimals: ``"$1,234.50."`` -> ``"1234.5"``, ``"18.00"`` -> ``"18"``, ``"-3"`` -> ``"-3"``.
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    number = re.sub(r"[$,\s]", "", match.group(0))
    negative = number.startswith("-")
    number = number.lstrip("-")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    if number.startswith("."):
        number = "0" + number
    number = number.lstrip("0") or "0"
    if number.startswith("."):
        number = "0" + number
    return "-" + number if negative and number != "0" else number


def extract_answer(text: str) -> str | None:
    r"""The final answer of a GSM8K-style solution as a canonical number string.

    The answer is the first number after the last ``####`` marker (``"#### 1,200."`` ->
    ``"1200"``); without a marker (or without a number after it) it falls back to the last
    number in the text. Returns ``None`` when the text holds no number.

    Args:
        text: a reference solution or a model's generated completion.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}: {text!r}")
    if _MARKER in text:
        found = normalize_number(text.rsplit(_MARKER, 1)[1])
        if found is not None:
            return found
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    r"""Fraction of predictions whose extracted answer equals the reference's.

    :math:`\mathrm{EM} = \frac{1}{N}\sum_i [\,a(\hat y_i) = a(y_i) \ne \varnothing\,]` with
    :math:`a` = :func:`extract_answer`; a prediction without a number scores 0.

    Raises:
        ValueError: if the lists are empty, differ in length, or a reference holds no number.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("exact_match expects sequences of strings, not a single str")
    if len(predictions) != len(references):
        raise ValueError(
            f"exact_match got {len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise ValueError("exact_match needs at least one prediction/reference pair")
    correct = 0
    for prediction, reference in zip(predictions, references):
        gold = extract_answer(reference)
        if gold is None:
            raise ValueError(f"reference has no numeric answer: {reference!r}")
        correct += int(extract_answer(prediction) == gold)
    return correct / len(references)
