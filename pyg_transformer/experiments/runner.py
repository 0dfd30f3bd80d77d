"""One training arm on :class:`transformers.Trainer`: train, evaluate, summarise."""

from __future__ import annotations

import logging
import math
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from pyg_transformer.data import protein_ss_accuracy
from pyg_transformer.experiments.settings import (  # noqa: F401 (re-exported)
    ArmResult,
    TrainSettings,
    check_int_fields,
    is_main_process,
)
from pyg_transformer.training import (
    ConciseProgressCallback,
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
    if trainer.pop_callback(ProgressCallback) is not None:  # a bar + one line per evaluation
        trainer.add_callback(ConciseProgressCallback)
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
