"""The command line answers without torch, and ``--config`` re-runs a run exactly (issue 11)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_llm_helpers import TINY_TRAIN

from pyg_transformer._lazy import running_the_cli
from pyg_transformer.cli import main
from pyg_transformer.cli.main import CONFIG_NAME, build_parser, parse_arguments, resolved_config

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "torch_geometric", "datasets")


def _imported_modules(*args: str) -> tuple[int, set[str], str]:
    """Run ``python -X importtime -m pyg_transformer ARGS``: exit code, the top-level
    packages it imported, its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pyg_transformer", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines[1:]}
    output = done.stdout + "\n".join(l for l in done.stderr.splitlines()
                                     if not l.startswith("import time:"))
    return done.returncode, modules, output


@pytest.mark.parametrize("args", [["--help"], ["compare", "pretrain", "--help"],
                                  ["finetune", "--help"]])
def test_help_imports_no_torch(args):
    code, modules, output = _imported_modules(*args)
    assert code == 0 and "usage: pyg-transformer" in output
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert "(default: " in output or args == ["--help"]


def test_argument_error_imports_no_torch():
    code, modules, output = _imported_modules("compare", "pretrain", "--seeds", "x")
    assert code == 2 and "invalid int value: 'x'" in output and "Traceback" not in output
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_cli_detection():
    assert running_the_cli(["/usr/bin/python3", "-m", "pyg_transformer", "--help"])
    assert running_the_cli(["/usr/bin/python3", "/venv/bin/pyg-transformer", "demo"])
    assert not running_the_cli(["/usr/bin/python3", "-m", "pytest", "tests"])
    assert not running_the_cli(["/usr/bin/python3", "train.py"])


def test_config_round_trip(tmp_path, data_file, capsys):
    out = tmp_path / "pt"
    argv = ["compare", "pretrain", "--arms", "gin", "standard", "--data", data_file,
            "--hidden-size", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
            "--intermediate-size", "64", "--gin-mlp-multiplier", "0.25", *TINY_TRAIN,
            "--output-dir", str(out)]
    assert main(argv) == 0
    written = json.loads((out / CONFIG_NAME).read_text())
    assert written["command"] == ["compare", "pretrain"]
    assert written["arms"] == ["gin", "standard"] and written["steps"] == 3
    assert written["gin_mlp_multiplier"] == 0.25
    original = resolved_config(parse_arguments(build_parser(), argv))
    again = resolved_config(parse_arguments(build_parser(), ["--config", str(out / CONFIG_NAME)]))
    assert again == original == written
    capsys.readouterr()
    assert main(["--config", str(out / CONFIG_NAME)]) == 0  # re-run: resumes both runs
    assert "resum" in capsys.readouterr().err.lower()


def test_yaml_config_command_line_wins_and_bad_files(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 7\nlr: 0.01\narms: [gin]\n")
    args = parse_arguments(build_parser(), ["compare", "pretrain", "--config", str(config),
                                            "--steps", "9"])
    assert (args.steps, args.lr, args.arms) == (9, 0.01, ["gin"])
    for text, message in (("stepz: 3\n", "unknown option(s) stepz for 'compare pretrain'"),
                          ("- 1\n", "must hold a mapping of option: value, got list"),
                          ("command: [finetune]\n", "is a 'finetune' configuration, not "
                                                    "'compare pretrain'")):
        config.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", "pretrain", "--config", str(config)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "pretrain", "--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2 and "No such file" in capsys.readouterr().err
