"""One training arm on :class:`transformers.Trainer`: train, evaluate, summarise."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from pyg_transformer.data import protein_ss_accuracy
from pyg_transformer.training import (
    GraphParameterCallback,
    PromptCompletionCollator,
    find_graph_parameters,
    best_eval_loss,
    encode_dataset,
    encode_prompt,
    exact_match_accuracy,
    generalization_gap,
    generate_completions,
    perplexity,
)

#: how held-out answers are scored (see :func:`train_arm`)
SCORINGS = ("number", "protein_ss")

logger = logging.getLogger(__name__)


def check_int_fields(settings, names: tuple[str, ...], minimum: int = 1) -> None:
    """Raise ``ValueError`` naming the first field of ``names`` that is not an int
    ``>= minimum``."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass
class TrainSettings:
    """Optimisation and evaluation settings shared by every arm of a comparison.

    Attributes:
        max_steps: optimiser steps.
        batch_size: sequences per step (per process under torchrun / accelerate).
        learning_rate: constant learning rate (AdamW), as in the paper's Tables 1-2.
        max_length: truncate sequences to this many tokens.
        logging_steps: log the training loss and graph scalars every this many steps.
        eval_steps: evaluate the held-out loss every this many steps.
        eval_size: held-out examples used for the validation loss (``0``: all).
        exact_match_size: held-out problems scored by greedy generation (``0``: skip).
        max_new_tokens: generation budget per problem for exact match (protein data
            generates its two class tokens only).
        seed: seed of initialisation, data order and dropout.
        output_dir: the run's folder: :func:`~pyg_transformer.experiments.run_finetune` and
            :func:`~pyg_transformer.experiments.run_pretrain` write its final weights and
            ``result.json`` there (the Trainer saves no intermediate checkpoints).
        bf16: train under bfloat16 autocast.
    """

    max_steps: int = 40
    batch_size: int = 2
    learning_rate: float = 2e-4
    max_length: int = 256
    logging_steps: int = 5
    eval_steps: int = 10
    eval_size: int = 32
    exact_match_size: int = 8
    max_new_tokens: int = 128
    seed: int = 0
    output_dir: str = "outputs/run"
    bf16: bool = False

    def __post_init__(self):
        check_int_fields(self, ("max_steps", "batch_size", "max_length", "logging_steps",
                                "eval_steps", "max_new_tokens"))
        check_int_fields(self, ("eval_size", "exact_match_size"), minimum=0)
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")


@dataclass
class ArmResult:
    """What one (arm, seed) run produced; ``to_dict`` is its ``results.json`` entry.

    ``exact_match`` is the share of scored held-out problems answered right (protein data:
    both classes right); ``primary_accuracy`` and ``secondary_accuracy`` are set for
    protein data only (see :func:`~pyg_transformer.data.protein_ss_accuracy`).
    """

    arm: str
    seed: int
    trainable_parameters: int
    total_parameters: int
    best_eval_loss: float
    best_eval_perplexity: float
    generalization_gap: float
    exact_match: float | None
    wall_time_s: float
    primary_accuracy: float | None = None
    secondary_accuracy: float | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    graph_history: list[dict[str, Any]] = field(default_factory=list)
    graph_parameters: dict[str, list] = field(default_factory=dict)
    predictions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmResult:
        """The result that :meth:`to_dict` wrote (e.g. a run's ``result.json``)."""
        return cls(**data)


def is_main_process() -> bool:
    """``True`` outside torchrun/accelerate and on rank 0 inside them."""
    return int(os.environ.get("RANK", "0")) == 0


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen, trainable, total = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def train_arm(
    arm: str,
    model: torch.nn.Module,
    tokenizer,
    datasets,
    settings: TrainSettings,
    *,
    text_column: str | None = None,
    scoring: str = "number",
    callbacks: list[TrainerCallback] | None = None,
) -> ArmResult:
    """Train ``model`` on ``datasets["train"]``, evaluate on ``datasets["test"]``.

    ``text_column=None`` trains on ``prompt``/``completion`` pairs (loss on the completion,
    fine-tuning); a column name trains on whole texts (pre-training). When the held-out
    split has ``prompt`` and ``answer`` columns, greedy completions of the prompts are
    scored against the answers: ``scoring="number"`` compares final numbers
    (:func:`~pyg_transformer.data.exact_match`, GSM8K), ``"protein_ss"`` the two class
    tokens (:func:`~pyg_transformer.data.protein_ss_accuracy`, two new tokens generated).
    ``callbacks`` are added to the Trainer's (e.g. to stop or observe training).
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    set_seed(settings.seed)
    collator = PromptCompletionCollator(tokenizer, max_length=settings.max_length)
    if text_column is None:
        datasets = {name: _drop_long_prompts(split, tokenizer, settings.max_length, name)
                    for name, split in datasets.items()}
    train = encode_dataset(datasets["train"], collator, text_column=text_column)
    heldout = datasets["test"]
    if settings.eval_size and len(heldout) > settings.eval_size:
        heldout = heldout.shuffle(seed=0).select(range(settings.eval_size))
    evaluation = encode_dataset(heldout, collator, text_column=text_column)
    graph_callback = GraphParameterCallback(require=False)
    args = TrainingArguments(
        output_dir=settings.output_dir,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=settings.logging_steps,
        eval_strategy="steps",
        eval_steps=settings.eval_steps,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=settings.bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        label_names=["labels"],  # adapter wrappers hide `labels` from the signature
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=collator, callbacks=[graph_callback, *(callbacks or [])])
    start = time.perf_counter()
    trainer.train()
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    if not evaluated or evaluated[-1] != trainer.state.global_step:
        trainer.evaluate()  # the final step is always evaluated
    wall_time = time.perf_counter() - start
    history = trainer.state.log_history

    exact, predictions, classes = None, [], {}
    scorable = {"prompt", "answer"} <= set(heldout.column_names)
    if settings.exact_match_size and scorable and is_main_process():
        problems = heldout.select(range(min(settings.exact_match_size, len(heldout))))
        if scoring == "protein_ss":
            predictions = generate_completions(
                model, tokenizer, problems["prompt"], max_new_tokens=2,
                batch_size=settings.batch_size, progress=True)
            scored = protein_ss_accuracy(predictions, problems["answer"])
            exact = scored["both"]
            classes = {"primary_accuracy": scored["primary"],
                       "secondary_accuracy": scored["secondary"]}
        else:
            scored = exact_match_accuracy(model, tokenizer, problems["prompt"],
                                          problems["answer"],
                                          max_new_tokens=settings.max_new_tokens,
                                          batch_size=settings.batch_size, progress=True)
            exact, predictions = scored["exact_match"], scored["predictions"]

    trainable, total = count_parameters(model)
    best = best_eval_loss(history)
    parameters = find_graph_parameters(model) or {}
    return ArmResult(
        arm=arm,
        seed=settings.seed,
        trainable_parameters=trainable,
        total_parameters=total,
        best_eval_loss=best,
        best_eval_perplexity=perplexity(best),
        generalization_gap=generalization_gap(history),
        exact_match=exact,
        wall_time_s=wall_time,
        **classes,
        log_history=[{k: v for k, v in entry.items() if _is_finite_number(v) or k == "step"}
                     for entry in history],
        graph_history=graph_callback.history,
        graph_parameters={k: v.tolist() for k, v in parameters.items()},
        predictions=predictions,
    )


def _drop_long_prompts(split, tokenizer, max_length: int, name: str):
    """Keep the rows whose prompt leaves room for at least one completion token."""
    kept = split.filter(lambda row: len(encode_prompt(tokenizer, row["prompt"])) < max_length)
    if len(kept) < len(split):
        logger.warning("%s: dropped %d of %d examples whose prompt has >= %d tokens",
                       name, len(split) - len(kept), len(split), max_length)
    if len(kept) == 0:
        raise ValueError(f"every {name} prompt has >= max_length={max_length} tokens: "
                         "raise max_length")
    return kept


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
