"""Run every arm of a comparison over seeds; write ``results.json``, a table and figures."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyg_transformer.experiments.finetune import (
    FINETUNE_METHODS,
    FinetuneSettings,
    load_base_model,
    load_finetune_data,
    run_finetune,
)
from pyg_transformer.experiments.pretrain import (
    PRETRAIN_ATTENTIONS,
    PretrainSettings,
    load_pretrain_data,
    run_pretrain,
)
from pyg_transformer.experiments.runner import ArmResult, TrainSettings, is_main_process

#: (results key, table header, format) of the summary table's columns
METRICS = (
    ("best_eval_perplexity", "best val. perplexity", "{:.3f}"),
    ("generalization_gap", "generalisation gap", "{:.3f}"),
    ("exact_match", "exact match", "{:.3f}"),
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("wall_time_s", "wall time (s)", "{:.0f}"),
)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: dict[str, list[ArmResult]]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every metric of :data:`METRICS`, per arm."""
    summary = {}
    for arm, results in runs.items():
        summary[arm] = {}
        for key, _, _ in METRICS:
            values = [getattr(r, key) for r in results if getattr(r, key) is not None]
            if values:
                summary[arm][key] = _mean_std([float(v) for v in values])
    return summary


def markdown_table(summary: dict[str, dict[str, Any]], num_seeds: int) -> str:
    """The comparison as a Markdown table (mean ± std over ``num_seeds`` seeds)."""
    header = ["arm"] + [title for _, title, _ in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, metrics in summary.items():
        cells = [arm]
        for key, _, fmt in METRICS:
            if key not in metrics:
                cells.append("–")
                continue
            mean, std = metrics[key]["mean"], metrics[key]["std"]
            cells.append(fmt.format(mean) + (f" ± {fmt.format(std)}" if num_seeds > 1 else ""))
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


def compare(kind: str, arms: list[str], seeds: list[int], train: TrainSettings,
            settings: FinetuneSettings | PretrainSettings, out_dir: str | Path) -> dict[str, Any]:
    """Run ``arms`` x ``seeds`` with identical data, steps and seeds.

    Writes ``results.json`` (every run with its log history, and the summary),
    ``results.md`` (the table) and PNG figures into ``out_dir``; returns the results.
    """
    allowed = {"finetune": FINETUNE_METHODS, "pretrain": PRETRAIN_ATTENTIONS}
    if kind not in allowed:
        raise ValueError(f"kind must be 'finetune' or 'pretrain', got {kind!r}")
    unknown = [a for a in arms if a not in allowed[kind]]
    if not arms or unknown:
        raise ValueError(f"arms must be a non-empty subset of {allowed[kind]}, got {arms!r}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    runs: dict[str, list[ArmResult]] = {arm: [] for arm in arms}
    base = load_base_model(settings.model) if kind == "finetune" else None
    for seed in seeds:
        seed_train = TrainSettings(**{**asdict(train), "seed": seed})
        if kind == "finetune":
            datasets = load_finetune_data(settings, base[1], seed)
        else:
            datasets = load_pretrain_data(settings, seed)
        for arm in arms:
            seed_train.output_dir = str(out_dir / "runs" / f"{arm}-seed{seed}")
            if kind == "finetune":
                result = run_finetune(arm, settings, seed_train, datasets=datasets, base=base)
            else:
                result = run_pretrain(arm, settings, seed_train, datasets=datasets)
            runs[arm].append(result)

    summary = summarise(runs)
    if not is_main_process():  # under torchrun every rank trains; rank 0 reports
        return {"summary": summary, "table": "", "figures": []}
    results = {
        "kind": kind,
        "seeds": list(seeds),
        "train_settings": asdict(train),
        "settings": asdict(settings),
        "summary": summary,
        "runs": {arm: [r.to_dict() for r in results] for arm, results in runs.items()},
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(summary, len(seeds))
    (out_dir / "results.md").write_text(table)
    results["table"] = table
    results["figures"] = [str(p) for p in write_figures(runs, out_dir)]
    return results
