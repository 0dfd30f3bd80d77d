"""The ``pyg-transformer`` command line and the end-to-end comparisons behind it."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from tiny_llm_helpers import TINY_TRAIN

from pyg_transformer.cli import main


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
        saved = json.loads((out_dir / "runs" / f"{arm}-seed0" / "result.json").read_text())
        assert saved == run
    assert results["complete"] and results["seeds"] == [0]
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


def test_bad_values_are_clean_errors(tmp_path, tiny_model_dir, data_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--method", "lora", "--model", tiny_model_dir, "--data", data_file,
              "--steps", "0"])
    assert exit_info.value.code == 2
    assert "max_steps must be a positive int, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["graph", "some text", "--model", tiny_model_dir, "--layer", "7",
              "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--layer must be in [0, 1], got 7" in capsys.readouterr().err


def test_graph_command_draws_a_prompt(tmp_path, tiny_model_dir, capsys):
    args = ["graph", "Tom has 3 apples.", "--model", tiny_model_dir, "--layer", "1",
            "--threshold", "0.5", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    summary, *printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"layer 1: nodes \d+, edges \d+, cross-token edges \d+, mean degree "
                        r"\d+\.\d\d", summary), summary
    assert len(printed) == 2
    for path in printed:
        assert os.path.getsize(path) > 1000
    drawn_at = os.stat(printed[0]).st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:  # the PNGs are not replaced silently
        main(args)
    assert exit_info.value.code == 2
    assert f"{printed[0]!r} already exists; pass --overwrite" in _error_line(capsys)
    assert os.stat(printed[0]).st_mtime_ns == drawn_at
    assert main([*args, "--overwrite"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == printed
    assert os.stat(printed[0]).st_mtime_ns != drawn_at


def test_graph_command_head_adapter_and_labels(tmp_path, tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model
    from pyg_transformer.cli.main import _token_labels

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("Tom has 3 apples.")["input_ids"]
    labels = _token_labels(tokenizer, ids)
    assert len(labels) == len(ids) and "T" in labels and all(labels)
    base = ["graph", "Tom has 3 apples.", "--model", tiny_model_dir, "--layer", "1"]
    assert main([*base, "--head", "2", "--output-dir", str(tmp_path / "head")]) == 0
    assert capsys.readouterr().out.startswith("layer 1, head 2: nodes ")
    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_sparse_gin_model(model, SparseGinConfig(hidden_dim=8, epsilon=0.3,
                                                target_layers=[1])).save_pretrained(adapter)
    assert main([*base, "--adapter", str(adapter), "--output-dir", str(tmp_path / "ad")]) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith("layer 1, Sparse-GIN adapter graph: nodes ")
    for bad, message in ((["--head", "9"], "--head must be in [0, 3], got 9"),
                         (["--adapter", str(tmp_path / "nope")], "--adapter must be an adapter "
                                                                 "folder"),
                         (["--layer", "0", "--adapter", str(adapter)],
                          "the adapter does not adapt layer 0 (it adapts [1])")):
        argv = [*base[:-2], *bad, "--output-dir", str(tmp_path / "bad")]
        if "--layer" not in bad:
            argv[4:4] = ["--layer", "1"]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in _error_line(capsys)


def _error_line(capsys) -> str:
    """The one ``pyg-transformer: error: ...`` line on stderr (after any progress bars)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pyg-transformer: error: ")
    assert sum("pyg-transformer: error" in line for line in lines) == 1
    return lines[-1]


def test_missing_model_folder_is_a_clean_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    result = _run_cli("graph", "Tom has 3 apples.", "--model", missing,
                      "--output-dir", str(tmp_path / "graph"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == ("pyg-transformer: error: model must be 'smollm2' or an existing model "
                    f"folder, got {missing!r}")


def _config_only_model(tmp_path, model_dir):
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(os.path.join(model_dir, "config.json"), folder)
    return str(folder)


def _header_only_csv(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("prompt,completion\n")
    return str(path)


def _empty_pairs(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps({"prompt": "", "completion": ""}) + "\n"
                            for _ in range(10)))
    return str(path)


def _under_a_file(tmp_path):
    (tmp_path / "somefile").write_text("")
    return str(tmp_path / "somefile" / "out")


#: name: (arguments from (tmp_path, model folder, data file), expected message)
BAD_INPUTS = {
    "model folder without weights": (
        lambda tmp, model, data: ["graph", "Tom has 3 apples.", "--model",
                                  _config_only_model(tmp, model), "--output-dir", str(tmp)],
        r"model folder '.*config-only' holds no weights \(none of model\.safetensors"),
    "fine-tuning a model folder without weights": (
        lambda tmp, model, data: ["finetune", "--method", "lora", "--model",
                                  _config_only_model(tmp, model), "--data", data,
                                  "--output-dir", str(tmp / "out")],
        r"holds no weights"),
    "output directory under a file": (
        lambda tmp, model, data: ["finetune", "--method", "lora", "--model", model, "--data",
                                  data, "--output-dir", _under_a_file(tmp)],
        r"output directory '.*somefile/out' cannot be created: '.*somefile' is a file"),
    "header-only CSV": (
        lambda tmp, model, data: ["finetune", "--method", "lora", "--model", model, "--data",
                                  _header_only_csv(tmp), "--output-dir", str(tmp / "out")],
        r"data file has no rows: '.*header\.csv'"),
    "empty prompts and completions": (
        lambda tmp, model, data: ["finetune", "--method", "lora", "--model", model, "--data",
                                  _empty_pairs(tmp), "--output-dir", str(tmp / "out")],
        r"'completion' of '.*empty\.jsonl' is empty in every row: nothing to train on"),
    "repeated arms": (
        lambda tmp, model, data: ["compare", "finetune", "--arms", "lora", "lora", "--model",
                                  model, "--data", data, "--output-dir", str(tmp / "out")],
        r"arms must not repeat, got \['lora', 'lora'\]"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, tiny_model_dir, data_file,
                                               capsys):
    arguments, message = BAD_INPUTS[case]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments(tmp_path, tiny_model_dir, data_file))
    assert exit_info.value.code == 2
    assert re.search(message, _error_line(capsys))
    assert not list(tmp_path.glob("**/result.json"))  # nothing was trained


def test_read_only_output_dir_is_refused_before_training(tmp_path, capsys):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    euid = os.geteuid()
    try:
        if euid == 0:  # root writes into read-only folders: try as an unprivileged user
            try:
                os.seteuid(65534)
            except PermissionError:
                pytest.skip("running as root without the right to switch user")
        with pytest.raises(SystemExit) as exit_info:
            main(["pretrain", "--attention", "gin", "--output-dir", str(read_only)])
    finally:
        os.seteuid(euid)
        read_only.chmod(0o700)
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert f"cannot write to output directory {str(read_only)!r}: Permission denied" in line


def test_rerun_resumes_refuses_another_configuration_and_overwrites(tmp_path, tiny_model_dir,
                                                                   data_file, capsys):
    out = tmp_path / "lora"
    args = ["finetune", "--method", "lora", "--model", tiny_model_dir, "--data", data_file,
            "--lora-rank", "2", *TINY_TRAIN, "--exact-match-size", "0", "--output-dir",
            str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()[-2:]  # after the Trainer's log lines
    run = out / "runs" / "lora-seed0"
    assert printed[0].startswith("lora: best val. perplexity") and printed[1] == f"saved: {run}"
    weights = run / "adapter_model.safetensors"
    saved_at = weights.stat().st_mtime_ns

    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"resuming: lora-seed0 already finished, loaded from {run}" in captured.err
    assert captured.out.splitlines() == printed  # trained nothing, printed the same
    assert weights.stat().st_mtime_ns == saved_at

    refused = []  # another configuration, and the demo's, into the same folder
    for command in ([*args, "--lora-rank", "4"], ["demo", "--output-dir", str(out)]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 2
        refused.append(_error_line(capsys))
    for line in refused:
        assert f"output directory {str(out)!r} holds runs of another configuration" in line
        assert "rerun with --overwrite" in line
    assert "(settings.lora_rank: 2 -> 4)" in refused[0]
    assert weights.stat().st_mtime_ns == saved_at

    assert main([*args, "--lora-rank", "4", "--overwrite"]) == 0
    assert weights.stat().st_mtime_ns != saved_at
    assert json.loads((out / "experiment.json").read_text())["settings"]["lora_rank"] == 4


def test_pretrain_saves_a_model_that_the_graph_command_draws(tmp_path, data_file, capsys):
    out = tmp_path / "gin"
    assert main(["pretrain", "--attention", "gin", "--data", data_file, "--hidden-size", "32",
                 "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate-size",
                 "64", *TINY_TRAIN, "--output-dir", str(out)]) == 0
    run = out / "runs" / "gin-seed0"
    assert {"result.json", "config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in run.iterdir()}
    capsys.readouterr()
    assert main(["graph", "Tom has 3 apples.", "--model", str(run), "--layer", "1",
                 "--output-dir", str(tmp_path / "graph")]) == 0
    summary, *paths = capsys.readouterr().out.splitlines()
    assert summary.startswith("layer 1, head 0: nodes 18, edges ") and len(paths) == 2


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "pyg-transformer"]
    assert script.load() is main


def test_training_output_is_concise(tmp_path, tiny_model_dir, data_file, capfd):
    """A progress bar with the loss and one line per evaluation; no per-layer scalars and
    no nested evaluation bars on the terminal (they stay in the results)."""
    out = tmp_path / "ft"
    assert main(["finetune", "--method", "sparse-gin", "--model", tiny_model_dir, "--data",
                 data_file, "--lora-rank", "2", "--steps", "4", "--eval-steps", "2",
                 "--logging-steps", "1", "--eval-size", "4", "--exact-match-size", "0",
                 "--output-dir", str(out)]) == 0
    captured = capfd.readouterr()
    terminal = captured.out + captured.err
    assert "lambda/layer_" not in terminal and "eps/layer_" not in terminal
    evaluations = re.findall(r"step (\d+): eval loss \d+\.\d{4}, perplexity \d+\.\d{3}", terminal)
    assert evaluations[:2] == ["2", "4"]
    result = json.loads((out / "runs" / "sparse-gin-seed0" / "result.json").read_text())
    assert any("lambda/layer_0" in entry for entry in result["log_history"])
