"""Paired per-seed comparisons of a comparison's results (the reproduction report)."""

import json

import pytest

from pyg_transformer.experiments.report import main, paired_differences, paired_table


def _results():
    def run(seed, ppl, acc):
        return {"seed": seed, "best_eval_perplexity": ppl, "generalization_gap": 0.0,
                "primary_accuracy": acc, "exact_match": None}

    return {"runs": {
        "standard": [run(0, 10.0, 0.5), run(1, 12.0, 0.6), run(2, 11.0, 0.55)],
        "gin": [run(0, 9.0, 0.52), run(1, 11.1, 0.61), run(2, 10.2, 0.54)],
        "noisy": [run(0, 9.0, 0.5), run(1, 13.0, 0.6)],
    }}


def test_paired_differences_cancel_the_shared_seed_variation():
    diff = paired_differences(_results(), "gin", "standard", "best_eval_perplexity")
    assert diff["seeds"] == [0, 1, 2]
    assert diff["differences"] == pytest.approx([-1.0, -0.9, -0.8])
    assert diff["mean"] == pytest.approx(-0.9) and diff["std"] == pytest.approx(0.1)
    # the arms' own spread over seeds (1.0) is larger than the mean difference: not shown
    assert diff["arm_std"] == pytest.approx(1.05, abs=0.01) and not diff["exceeds_spread"]
    noisy = paired_differences(_results(), "noisy", "standard", "best_eval_perplexity")
    assert noisy["seeds"] == [0, 1] and noisy["differences"] == pytest.approx([-1.0, 1.0])
    assert paired_differences(_results(), "gin", "standard", "exact_match") is None
    with pytest.raises(ValueError, match="arm 'pna' is not in the results"):
        paired_differences(_results(), "pna", "standard", "best_eval_perplexity")


def test_a_difference_beyond_every_spread_is_reported_with_its_direction(tmp_path, capsys):
    results = _results()
    for run, ppl in zip(results["runs"]["gin"], (5.0, 6.9, 6.1)):
        run["best_eval_perplexity"] = ppl
    table = paired_table(results, "standard")
    assert "| gin | best val. perplexity | -5.000 ± 0.100 | -5.000, -5.100, -4.900 | yes, " \
           "better |" in table
    assert "| noisy | best val. perplexity | +0.000 ± 1.414 | -1.000, +1.000 | no |" in table
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path), "--reference", "standard"]) == 0
    assert (tmp_path / "paired_vs_standard.md").read_text().strip() == table
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--reference", "lora"])
    assert exit_info.value.code == 2 and "arm 'lora' is not in the results" in \
        capsys.readouterr().err
