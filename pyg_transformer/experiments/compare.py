"""Run every arm of a comparison over seeds; write ``results.json``, a table and figures."""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyg_transformer.experiments.arms import Arm
from pyg_transformer.experiments.finetune import (
    FinetuneSettings,
    finetune_arm,
    load_base_model,
    load_finetune_data,
    run_finetune,
)
from pyg_transformer.experiments.pretrain import (
    PretrainSettings,
    load_pretrain_data,
    pretrain_arm,
    run_pretrain,
)
from pyg_transformer.experiments.settings import ArmResult, TrainSettings, is_main_process
from pyg_transformer.experiments.runs import (
    experiment_config,
    load_run,
    prepare_output_dir,
    run_dir,
    write_json,
    write_text,
)

logger = logging.getLogger(__name__)

#: (results key, table header, format) of the summary table's columns
METRICS = (
    ("best_eval_perplexity", "best val. perplexity", "{:.3f}"),
    ("generalization_gap", "generalisation gap", "{:.3f}"),
    ("exact_match", "exact match", "{:.3f}"),
    ("primary_accuracy", "primary class acc.", "{:.3f}"),
    ("secondary_accuracy", "secondary class acc.", "{:.3f}"),
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("wall_time_s", "wall time (s)", "{:.0f}"),
)
#: columns of :data:`METRICS` that the table shows only when some arm has them (protein data)
OPTIONAL_METRICS = ("primary_accuracy", "secondary_accuracy")


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: dict[str, list[ArmResult]]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every metric of :data:`METRICS`, per arm, and the
    arm's number of finished seeds (``"num_seeds"``)."""
    summary = {}
    for arm, results in runs.items():
        summary[arm] = {"num_seeds": len(results)}
        for key, _, _ in METRICS:
            values = [getattr(r, key) for r in results if getattr(r, key) is not None]
            if values:
                summary[arm][key] = _mean_std([float(v) for v in values])
    return summary


def markdown_table(summary: dict[str, dict[str, Any]], num_seeds: int) -> str:
    """The comparison as a Markdown table (mean ± std over ``num_seeds`` seeds).

    An arm with fewer finished seeds (its ``"num_seeds"``, e.g. an interrupted
    comparison) is labelled ``arm (k of num_seeds seeds)``. The columns of
    :data:`OPTIONAL_METRICS` appear only when some arm has them.
    """
    columns = [(key, title, fmt) for key, title, fmt in METRICS
               if key not in OPTIONAL_METRICS or any(key in m for m in summary.values())]
    header = ["arm"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, metrics in summary.items():
        finished = metrics.get("num_seeds", num_seeds)
        cells = [arm if finished == num_seeds else f"{arm} ({finished} of {num_seeds} seeds)"]
        for key, _, fmt in columns:
            if key not in metrics:
                cells.append("–")
                continue
            mean, std = metrics[key]["mean"], metrics[key]["std"]
            cells.append(fmt.format(mean) + (f" ± {fmt.format(std)}" if finished > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    note = f"mean ± std over {num_seeds} seeds" if num_seeds > 1 else "1 seed"
    return "\n".join(lines) + (f"\n\n({note}; perplexity and gap on held-out data; wall time "
                               "of training with its evaluations.)\n")


def write_figures(runs: dict[str, list[ArmResult]], out_dir: Path) -> list[Path]:
    """Training curves, generalisation-gap bars and the learned graph scalars."""
    from pyg_transformer.viz import (
        plot_alpha_per_layer,
        plot_generalization_gap,
        plot_lambda_over_training,
        plot_training_curves,
    )

    figures = [
        plot_training_curves({arm: [r.log_history for r in results]
                              for arm, results in runs.items()},
                             out_dir / "training_curves.png", title="Training / validation loss"),
        plot_generalization_gap({arm: [r.generalization_gap for r in results]
                                 for arm, results in runs.items()},
                                out_dir / "generalization_gap.png"),
    ]
    runs = {arm: results for arm, results in runs.items() if results}
    for arm, results in runs.items():
        first = results[0]
        if "lambda" in first.graph_parameters and first.graph_history:
            figures.append(plot_lambda_over_training(
                first.graph_history, out_dir / f"lambda_{arm}.png",
                title=f"{arm}: trainable scale λ per layer"))
    alphas = {arm: results[0].graph_parameters["alpha"] for arm, results in runs.items()
              if "alpha" in results[0].graph_parameters}
    if alphas:
        figures.append(plot_alpha_per_layer(alphas, out_dir / "alpha_per_layer.png"))
    return figures


def resolve_arms(kind: str, arms: list[str | Arm],
                 settings: FinetuneSettings | PretrainSettings | None = None) -> list[Arm]:
    """``arms`` (built-in arms' names or :class:`~pyg_transformer.experiments.arms.Arm`)
    as checked arms of ``kind``.

    Raises:
        ValueError: an unknown ``kind``, no arms, an unknown or bad arm, or a repeated
            name.
    """
    if kind not in ("finetune", "pretrain"):
        raise ValueError(f"kind must be 'finetune' or 'pretrain', got {kind!r}")
    if isinstance(arms, (str, Arm)) or not arms:
        raise ValueError(f"arms must be a non-empty list of arms, got {arms!r}")
    if kind == "finetune":
        resolved = [finetune_arm(arm) for arm in arms]
    else:
        resolved = [pretrain_arm(arm, settings) for arm in arms]
    names = [arm.name for arm in resolved]
    if len(set(names)) < len(names):
        raise ValueError(f"arms must not repeat, got {names!r}")
    return resolved


def check_plan(kind: str, arms: list[str | Arm], seeds: list[int],
               settings: FinetuneSettings | PretrainSettings | None = None) -> list[Arm]:
    """The arms of :func:`resolve_arms`; raise ``ValueError`` for bad arms or seeds that
    are not distinct non-negative ints."""
    resolved = resolve_arms(kind, arms, settings)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints >= 0, got {seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must not repeat, got {list(seeds)!r}")
    return resolved


def iter_runs(kind: str, arms: list[str | Arm], seeds: list[int], train: TrainSettings,
              settings: FinetuneSettings | PretrainSettings, out_dir: str | os.PathLike, *,
              overwrite: bool = False, callbacks=None) -> Iterator[ArmResult]:
    """Train every (arm, seed) run into ``out_dir/runs/<arm>-seed<seed>/``, or resume it.

    ``arms`` are built-in arms' names (:data:`~pyg_transformer.experiments.finetune.FINETUNE_ARMS`,
    :data:`~pyg_transformer.experiments.pretrain.PRETRAIN_ARMS`) or
    :class:`~pyg_transformer.experiments.arms.Arm` definitions. Yields each run's
    :class:`ArmResult` as soon as the run is finished and saved (seed by seed, arms in
    order). Before anything is trained, ``out_dir`` is checked and its
    ``experiment.json`` compared with this configuration
    (:func:`~pyg_transformer.experiments.runs.prepare_output_dir`): a run whose folder is
    complete is loaded from its ``result.json`` instead of being trained again, and a
    folder of another configuration is refused unless ``overwrite`` (which removes its
    runs and results first). ``callbacks`` go to every run's Trainer.

    Raises:
        ValueError: a bad plan (see :func:`check_plan`), an unwritable ``out_dir`` or one
            holding runs of another configuration.
    """
    arms = check_plan(kind, arms, seeds, settings)
    out = prepare_output_dir(out_dir, experiment_config(kind, train, settings, arms),
                             overwrite=overwrite)
    base = None
    for seed in seeds:
        datasets = None
        for arm in arms:
            directory = run_dir(out, arm.name, seed)
            result = None if overwrite else load_run(directory, kind)
            if result is not None:
                logger.info("resuming: %s already finished, loaded from %s",
                            directory.name, directory)
                yield result
                continue
            run_train = replace(train, seed=seed, output_dir=str(directory))
            if kind == "finetune":  # the base model and a seed's data load once, if needed
                if base is None:
                    base = load_base_model(settings.model)
                if datasets is None:
                    datasets = load_finetune_data(settings, base[1], seed)
                yield run_finetune(arm, settings, run_train, datasets=datasets, base=base,
                                   callbacks=callbacks)
            else:
                if datasets is None:
                    datasets = load_pretrain_data(settings, seed, train.max_length)
                yield run_pretrain(arm, settings, run_train, datasets=datasets,
                                   callbacks=callbacks)


def compare(kind: str, arms: list[str | Arm], seeds: list[int], train: TrainSettings,
            settings: FinetuneSettings | PretrainSettings, out_dir: str | os.PathLike, *,
            overwrite: bool = False, callbacks=None) -> dict[str, Any]:
    """Run ``arms`` x ``seeds`` with identical data, steps and seeds.

    Every run is saved as soon as it finishes (see :func:`iter_runs`: its
    ``result.json`` and weights in ``out_dir/runs/<arm>-seed<seed>/``), and
    ``results.json`` (every finished run with its log history, and the summary) and
    ``results.md`` (the table) are rewritten atomically after each run, so an interrupted
    comparison keeps everything it finished; running it again resumes. PNG figures follow
    once all runs are done. ``train.seed`` and ``train.output_dir`` are replaced per run;
    ``callbacks`` (:class:`transformers.TrainerCallback`) go to every run's Trainer.
    Returns the results (with ``"table"`` and ``"figures"``).

    Raises:
        ValueError: a bad plan, an unwritable ``out_dir`` or one holding runs of another
            configuration (unless ``overwrite``, which replaces them).
    """
    out = Path(out_dir)
    arms = check_plan(kind, arms, seeds, settings)
    runs: dict[str, list[ArmResult]] = {arm.name: [] for arm in arms}
    for result in iter_runs(kind, arms, seeds, train, settings, out, overwrite=overwrite,
                            callbacks=callbacks):
        runs[result.arm].append(result)
        if is_main_process():  # under torchrun every rank trains; rank 0 reports
            results = write_results(out, kind, seeds, train, settings, runs, arms)
    if not is_main_process():
        return {"summary": summarise(runs), "table": "", "figures": []}
    results["figures"] = [str(p) for p in write_figures(runs, out)]
    return results


def write_results(out_dir: Path, kind: str, seeds: list[int], train: TrainSettings,
                  settings: FinetuneSettings | PretrainSettings,
                  runs: dict[str, list[ArmResult]], arms: list[Arm]) -> dict[str, Any]:
    """Replace ``results.json`` and ``results.md`` with the runs finished so far.

    ``results.json`` holds the configuration (``kind``, ``arms``, ``seeds``,
    ``train_settings``, ``settings``, ``arm_definitions``), ``complete`` (whether every
    arm has every seed), the summary and every run; returns it with the table under
    ``"table"``.
    """
    summary = summarise(runs)
    results = {
        **experiment_config(kind, train, settings, arms),
        "arms": list(runs),
        "seeds": list(seeds),
        "complete": all(len(r) == len(seeds) for r in runs.values()),
        "summary": summary,
        "runs": {arm: [r.to_dict() for r in results] for arm, results in runs.items()},
    }
    results["train_settings"] = results.pop("train")
    write_json(out_dir / "results.json", results)
    table = markdown_table(summary, len(seeds))
    write_text(out_dir / "results.md", table)
    return {**results, "table": table}
