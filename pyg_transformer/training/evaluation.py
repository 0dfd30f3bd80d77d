"""Evaluation: perplexity, exact-match accuracy by greedy generation, and log-history summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pyg_transformer.data.answers import exact_match, extract_answer
from pyg_transformer.training.collator import encode_prompt


def perplexity(loss: float) -> float:
    r"""Perplexity :math:`\exp(\mathcal{L})` of a mean token cross-entropy ``loss`` (nats),
    e.g. ``trainer.evaluate()["eval_loss"]``; ``inf`` when it overflows."""
    loss = float(loss)
    if math.isnan(loss):
        raise ValueError("loss is NaN: training diverged or the eval set has no labelled token")
    if loss < 0:
        raise ValueError(f"a cross-entropy loss is >= 0, got {loss}")
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    r"""Greedy completions of ``prompts``, batched with left padding.

    Prompts are tokenised with :func:`~pyg_transformer.training.collator.encode_prompt`
    (as in training); generation stops at EOS or after ``max_new_tokens``; the decoded new
    tokens are returned without special tokens. The model's train/eval mode is restored.
    """
    from tqdm.auto import tqdm

    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single str")
    prompts = list(prompts)
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if pad_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", disable=not progress):
            encoded = [encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
            length = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, length - len(ids):] = 1
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=pad_id, eos_token_id=eos_id)
            new_tokens = generated[:, length:]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def exact_match_accuracy(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    r"""Exact-match accuracy of greedy completions on held-out prompts.

    ``references`` are solutions ending in ``#### N`` or bare answers (``"N"``); both sides
    are compared with :func:`~pyg_transformer.data.extract_answer`.

    Returns:
        ``{"exact_match": float, "predictions": list[str], "answers": list[str | None]}``
        (generated texts and their extracted answers).
    """
    if len(prompts) != len(references):
        raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
    predictions = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, progress=progress)
    return {"exact_match": exact_match(predictions, references), "predictions": predictions,
            "answers": [extract_answer(p) for p in predictions]}


def loss_curves(log_history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    r"""``{"train": [(step, loss)], "eval": [(step, eval_loss)]}`` from
    ``trainer.state.log_history`` (the final ``train_loss`` summary is not a curve point)."""
    curves: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
    for entry in log_history:
        if "loss" in entry:
            curves["train"].append((int(entry["step"]), float(entry["loss"])))
        if "eval_loss" in entry:
            curves["eval"].append((int(entry["step"]), float(entry["eval_loss"])))
    return curves


def best_eval_loss(log_history: Sequence[dict[str, Any]]) -> float:
    """The lowest ``eval_loss`` in a log history (its best validation perplexity is
    ``perplexity(best_eval_loss(h))``)."""
    evals = [loss for _, loss in loss_curves(log_history)["eval"]]
    if not evals:
        raise ValueError("log history has no eval_loss: set eval_strategy and an eval_dataset")
    return min(evals)


def generalization_gap(log_history: Sequence[dict[str, Any]]) -> float:
    r"""Validation minus training loss at the last evaluation,
    :math:`\mathcal{L}_{val}(s) - \mathcal{L}_{train}(s')` with :math:`s'` the last training
    log step :math:`\le s` (the paper's Fig. 7 measure; positive = over-fitting)."""
    curves = loss_curves(log_history)
    if not curves["eval"]:
        raise ValueError("log history has no eval_loss: set eval_strategy and an eval_dataset")
    step, eval_loss = curves["eval"][-1]
    train = [loss for s, loss in curves["train"] if s <= step]
    if not train:
        raise ValueError(f"log history has no training loss at or before step {step}")
    return eval_loss - train[-1]
