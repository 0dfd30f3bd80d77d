"""The ``pyg-transformer`` command line and the end-to-end comparisons behind it."""

import json
import math
import os
import subprocess
import sys

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from pyg_transformer.cli import main
from pyg_transformer.data import train_char_tokenizer

PROBLEMS = [
    ("Tom has {a} apples and buys {b} more. How many apples does he have?", "{a} + {b} = {c}"),
    ("A box holds {a} pens. {b} pens are added. How many pens are in the box?", "{a}+{b}={c}"),
    ("Sara reads {a} pages, then {b} pages. How many pages did she read?", "{a} + {b} is {c}"),
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    with path.open("w") as f:
        for i in range(30):
            question, solution = PROBLEMS[i % 3]
            a, b = i + 2, 2 * i + 1
            f.write(json.dumps({"question": question.format(a=a, b=b),
                                "answer": solution.format(a=a, b=b, c=a + b)
                                + f"\n#### {a + b}"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, data_file):
    """A tiny random Llama with a character tokenizer, saved like any HF checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    with open(data_file) as f:
        texts = [line for line in f] + ["Question: Answer:"]
    tokenizer = train_char_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


TINY_TRAIN = ["--steps", "3", "--eval-steps", "3", "--logging-steps", "1", "--eval-size", "4",
              "--exact-match-size", "2", "--max-new-tokens", "4", "--max-length", "256"]


def _check_results(out_dir, arms):
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results["runs"]) == set(arms) == set(results["summary"])
    for arm in arms:
        (run,) = results["runs"][arm]
        for key in ("best_eval_loss", "best_eval_perplexity", "generalization_gap",
                    "exact_match", "wall_time_s"):
            assert math.isfinite(run[key]), (arm, key, run[key])
        assert run["trainable_parameters"] > 0
        assert any("eval_loss" in e for e in run["log_history"])
    table = (out_dir / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in arms)
    figures = sorted(p.name for p in out_dir.glob("*.png"))
    assert "training_curves.png" in figures and "generalization_gap.png" in figures
    assert all((out_dir / f).stat().st_size > 1000 for f in figures)
    return results


def test_compare_finetune_end_to_end(tmp_path, tiny_model_dir, data_file, capsys):
    out = tmp_path / "ft"
    code = main(["compare", "finetune", "--model", tiny_model_dir, "--data", data_file,
                 "--lora-rank", "2", *TINY_TRAIN, "--output-dir", str(out)])
    assert code == 0
    results = _check_results(out, ["sparse-gin", "lora"])
    lora = results["runs"]["lora"][0]["trainable_parameters"]
    gin = results["runs"]["sparse-gin"][0]["trainable_parameters"]
    assert abs(gin - lora) / lora < 0.1  # matched trainable-parameter budgets
    assert "lambda" in results["runs"]["sparse-gin"][0]["graph_parameters"]
    assert (out / "lambda_sparse-gin.png").is_file()
    assert "| sparse-gin |" in capsys.readouterr().out


def test_compare_pretrain_end_to_end(tmp_path, data_file):
    out = tmp_path / "pt"
    code = main(["compare", "pretrain", "--data", data_file, "--hidden-size", "32",
                 "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate-size", "64",
                 *TINY_TRAIN, "--output-dir", str(out)])
    assert code == 0
    results = _check_results(out, ["gin", "pna", "standard"])
    sizes = [results["runs"][a][0]["total_parameters"] for a in ("gin", "pna", "standard")]
    assert max(sizes) - min(sizes) <= 0.02 * max(sizes)  # matched model sizes
    assert len(results["runs"]["gin"][0]["graph_parameters"]["alpha"]) == 2
    assert (out / "alpha_per_layer.png").is_file()


@pytest.mark.parametrize("command", [[], ["finetune"], ["pretrain"], ["compare"],
                                     ["compare", "finetune"], ["compare", "pretrain"],
                                     ["graph"], ["demo"]])
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: pyg-transformer" in capsys.readouterr().out


def _run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pyg_transformer", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_missing_data_file_is_a_clean_error(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    result = _run_cli("finetune", "--method", "lora", "--data", missing)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert missing in result.stderr and "pyg-transformer: error" in result.stderr


def test_unknown_method_is_a_clean_error():
    result = _run_cli("finetune", "--method", "prefix-tuning")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice: 'prefix-tuning'" in result.stderr


def test_bad_values_are_clean_errors(tiny_model_dir, data_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--method", "lora", "--model", tiny_model_dir, "--data", data_file,
              "--steps", "0"])
    assert exit_info.value.code == 2
    assert "max_steps must be a positive int, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["graph", "some text", "--model", tiny_model_dir, "--layer", "7"])
    assert exit_info.value.code == 2
    assert "--layer must be in [0, 1], got 7" in capsys.readouterr().err


def test_graph_command_draws_a_prompt(tmp_path, tiny_model_dir, capsys):
    code = main(["graph", "Tom has 3 apples.", "--model", tiny_model_dir, "--layer", "1",
                 "--threshold", "0.5", "--output-dir", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2
    for path in printed:
        assert os.path.getsize(path) > 1000


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "pyg-transformer"]
    assert script.load() is main
