"""The settings and results of experiment runs: plain dataclasses, no torch, so the
command line can build its parser and check arguments without importing torch."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any


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
