"""Paired comparisons of a finished ``compare`` (its ``results.json``) against a reference arm.

For each arm and metric the difference to the reference arm is taken seed by seed (both
arms saw the same data order and initial seed), so the seed-to-seed variation shared by
both arms cancels. A difference counts as exceeding the seed spread when its mean is
larger than the standard deviation of the per-seed differences *and* than the larger of
the two arms' own standard deviations over seeds. Run as
``python -m pyg_transformer.experiments.report OUTPUT_DIR --reference ARM``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

#: (metric key, label, higher is better)
REPORT_METRICS = (
    ("best_eval_perplexity", "best val. perplexity", False),
    ("generalization_gap", "generalisation gap", False),
    ("primary_accuracy", "primary class acc.", True),
    ("secondary_accuracy", "secondary class acc.", True),
    ("exact_match", "exact match", True),
)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired_differences(results: dict[str, Any], arm: str, reference: str,
                       metric: str) -> dict[str, Any] | None:
    """Per-seed ``arm - reference`` of ``metric`` over the seeds both arms finished.

    Returns:
        ``{"seeds", "differences", "mean", "std", "arm_std", "reference_std",
        "exceeds_spread"}``, or ``None`` when either arm lacks the metric.

    Raises:
        ValueError: an arm is not in ``results``.
    """
    runs = results["runs"]
    for name in (arm, reference):
        if name not in runs:
            raise ValueError(f"arm {name!r} is not in the results (arms: {sorted(runs)})")
    by_seed = {name: {r["seed"]: r.get(metric) for r in runs[name]} for name in (arm, reference)}
    seeds = sorted(s for s in by_seed[arm] if s in by_seed[reference]
                   and by_seed[arm][s] is not None and by_seed[reference][s] is not None)
    if not seeds:
        return None
    own = [by_seed[arm][s] for s in seeds]
    ref = [by_seed[reference][s] for s in seeds]
    differences = [a - b for a, b in zip(own, ref)]
    mean, std = statistics.fmean(differences), _std(differences)
    spread = max(std, _std(own), _std(ref))
    return {"seeds": seeds, "differences": differences, "mean": mean, "std": std,
            "arm_std": _std(own), "reference_std": _std(ref),
            "exceeds_spread": len(seeds) > 1 and abs(mean) > spread}


def paired_table(results: dict[str, Any], reference: str,
                 metrics: tuple = REPORT_METRICS) -> str:
    """A Markdown table: per arm and metric, the mean ± std of ``arm - reference`` over
    seeds, the per-seed differences, and whether the difference exceeds the seed spread
    (and in which direction it is better)."""
    lines = ["| arm | metric | arm − " + reference + " (mean ± std) | per seed | "
             "exceeds seed spread |", "|---|---|---|---|---|"]
    for arm in results["runs"]:
        if arm == reference:
            continue
        for key, label, higher_better in metrics:
            diff = paired_differences(results, arm, reference, key)
            if diff is None:
                continue
            better = (diff["mean"] > 0) == higher_better
            verdict = (("yes, " + ("better" if better else "worse")) if diff["exceeds_spread"]
                       else "no")
            per_seed = ", ".join(f"{d:+.3f}" for d in diff["differences"])
            lines.append(f"| {arm} | {label} | {diff['mean']:+.3f} ± {diff['std']:.3f} | "
                         f"{per_seed} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="a compare output folder (holds results.json)")
    parser.add_argument("--reference", required=True, help="the arm to compare against")
    args = parser.parse_args(argv)
    path = Path(args.output_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
        table = paired_table(results, args.reference)
    except (OSError, ValueError, KeyError) as error:
        parser.exit(2, f"error: {path}: {error}\n")
    out = Path(args.output_dir) / f"paired_vs_{args.reference}.md"
    out.write_text(table + "\n")
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
