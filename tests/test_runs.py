"""Runs are never lost or overwritten (issue 8): every finished (arm, seed) run is saved at
once with its weights, an interrupted comparison resumes, another configuration is refused
unless ``overwrite``, and the saved weights reload with the recorded held-out loss."""

import json
import logging
from dataclasses import replace

import peft
import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from pyg_transformer.adapters import SparseGinPeftModel
from pyg_transformer.data import load_local_dataset
from pyg_transformer.experiments import (
    FinetuneSettings,
    PretrainSettings,
    TrainSettings,
    compare,
    load_run,
    run_dir,
)
from pyg_transformer.training import PromptCompletionCollator, encode_dataset

TRAIN = TrainSettings(max_steps=2, batch_size=2, learning_rate=1e-3, max_length=256,
                      logging_steps=1, eval_steps=2, eval_size=4, exact_match_size=0,
                      max_new_tokens=4)


class CountRuns(TrainerCallback):
    """Counts the runs that start training; raises ``KeyboardInterrupt`` (like Ctrl-C) when
    run number ``stop_after + 1`` starts."""

    def __init__(self, stop_after: int | None = None):
        self.started, self.stop_after = 0, stop_after

    def on_train_begin(self, args, state, control, **kwargs):
        self.started += 1
        if self.stop_after is not None and self.started > self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture
def finetune_settings(tiny_model_dir, data_file):
    return FinetuneSettings(model=tiny_model_dir, data=data_file, lora_rank=2)


def test_interrupted_compare_keeps_finished_runs_and_resumes(tmp_path, finetune_settings,
                                                             caplog):
    out = tmp_path / "compare"
    arms = ["lora", "sparse-gin"]
    with pytest.raises(KeyboardInterrupt):
        compare("finetune", arms, [0], TRAIN, finetune_settings, out,
                callbacks=[CountRuns(stop_after=1)])
    lora = run_dir(out, "lora", 0)
    assert {"result.json", "adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in lora.iterdir()}
    assert load_run(run_dir(out, "sparse-gin", 0), "finetune") is None
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False and results["runs"]["sparse-gin"] == []
    assert results["runs"]["lora"] == [json.loads((lora / "result.json").read_text())]
    assert results["train_settings"]["max_steps"] == 2 and "seed" not in results["train_settings"]
    table = (out / "results.md").read_text()
    assert "| lora |" in table and "| sparse-gin (0 of 1 seeds) |" in table
    assert not list(out.glob("*.png"))  # figures come once every run is done
    saved_at = (lora / "adapter_model.safetensors").stat().st_mtime_ns
    partial = out / "runs" / "sparse-gin-seed0.partial"  # a save cut short: not a run
    partial.mkdir()
    (partial / "result.json").write_text("{}")

    counter = CountRuns()
    with caplog.at_level(logging.INFO, logger="pyg_transformer"):
        results = compare("finetune", arms, [0], TRAIN, finetune_settings, out,
                          callbacks=[counter])
    assert counter.started == 1  # only sparse-gin trained
    assert f"resuming: lora-seed0 already finished, loaded from {lora}" in caplog.text
    assert (lora / "adapter_model.safetensors").stat().st_mtime_ns == saved_at
    assert results["complete"] and not partial.exists()
    assert load_run(run_dir(out, "sparse-gin", 0), "finetune") is not None
    assert (out / "training_curves.png").is_file()

    changed = replace(TRAIN, max_steps=3)
    with pytest.raises(ValueError, match=r"another configuration \(train\.max_steps: 2 -> 3\)"):
        compare("finetune", arms, [0], changed, finetune_settings, out, callbacks=[counter])
    with pytest.raises(ValueError, match=r"settings\.lora_rank: 2 -> 4"):
        compare("finetune", arms, [0], TRAIN, replace(finetune_settings, lora_rank=4), out)
    assert counter.started == 1  # refused before training

    results = compare("finetune", ["lora"], [0], changed, finetune_settings, out,
                      overwrite=True, callbacks=[counter])
    assert counter.started == 2
    assert not run_dir(out, "sparse-gin", 0).exists()  # the old runs are gone
    assert not (out / "lambda_sparse-gin.png").exists()
    assert results["runs"]["lora"][0]["log_history"][-1]["step"] == 3
    assert json.loads((out / "experiment.json").read_text())["train"]["max_steps"] == 3


def test_more_seeds_and_arms_reuse_the_finished_runs(tmp_path, finetune_settings):
    out = tmp_path / "grow"
    compare("finetune", ["lora"], [0], TRAIN, finetune_settings, out)
    counter = CountRuns()
    results = compare("finetune", ["sparse-gin", "lora"], [0, 1], TRAIN, finetune_settings,
                      out, callbacks=[counter])
    assert counter.started == 3  # lora-seed0 is reused
    assert results["complete"] and [r["seed"] for r in results["runs"]["lora"]] == [0, 1]
    assert results["summary"]["lora"]["num_seeds"] == 2


def test_bad_plans_and_output_dirs_are_refused(tmp_path, finetune_settings):
    for arms, seeds, match in ((["lora", "lora"], [0], r"arms must not repeat"),
                               (["lora"], [0, 0], r"seeds must not repeat"),
                               (["lora"], [-1], r"seeds must be"),
                               (["prefix"], [0], r"unknown fine-tuning arm 'prefix'")):
        with pytest.raises(ValueError, match=match):
            compare("finetune", arms, seeds, TRAIN, finetune_settings, tmp_path / "x")
    a_file = tmp_path / "somefile"
    a_file.write_text("")
    with pytest.raises(ValueError, match=r"cannot be created: '.*somefile' is a file"):
        compare("finetune", ["lora"], [0], TRAIN, finetune_settings, a_file / "out")
    unknown = tmp_path / "old"
    (unknown / "runs" / "lora-seed0").mkdir(parents=True)
    (unknown / "runs" / "lora-seed0" / "result.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unknown configuration \(no experiment\.json\)"):
        compare("finetune", ["lora"], [0], TRAIN, finetune_settings, unknown)


# ------------------------------------------------------------ saved weights reload exactly
def _heldout_loss(model, tokenizer, data_file: str, task: str, seed: int, tmp_path) -> float:
    """The held-out loss as train_arm computes it: same split, subset, collator, batches."""
    heldout = load_local_dataset(data_file, task, tokenizer=tokenizer, seed=seed)["test"]
    if TRAIN.eval_size and len(heldout) > TRAIN.eval_size:
        heldout = heldout.shuffle(seed=0).select(range(TRAIN.eval_size))
    collator = PromptCompletionCollator(tokenizer, max_length=TRAIN.max_length)
    encoded = encode_dataset(heldout, collator,
                             text_column=None if task == "finetune" else "text")
    args = TrainingArguments(output_dir=str(tmp_path / "eval"), report_to=[], use_cpu=True,
                             per_device_eval_batch_size=TRAIN.batch_size,
                             label_names=["labels"])
    trainer = Trainer(model=model, args=args, eval_dataset=encoded, data_collator=collator)
    return trainer.evaluate()["eval_loss"]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory, tiny_model_dir, data_file):
    out = tmp_path_factory.mktemp("saved")
    compare("finetune", ["lora", "sparse-gin"], [1], TRAIN,
            FinetuneSettings(model=tiny_model_dir, data=data_file, lora_rank=2), out / "finetune")
    compare("pretrain", ["gin"], [1], TRAIN,
            PretrainSettings(data=data_file, hidden_size=32, num_layers=2, num_heads=4,
                             num_kv_heads=2, intermediate_size=64), out / "pretrain")
    return out


def _transformers_load_adapter(base: str, run: str):
    model = AutoModelForCausalLM.from_pretrained(base)
    model.load_adapter(run)
    return model


LOADERS = {  # the usual from_pretrained calls: (kind, arm, load(run folder, base folder))
    "lora, PeftModel": ("finetune", "lora", lambda run, base: peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), run)),
    "sparse-gin, SparseGinPeftModel": ("finetune", "sparse-gin",
                                       lambda run, base: SparseGinPeftModel.from_pretrained(
                                           AutoModelForCausalLM.from_pretrained(base), run)),
    "sparse-gin, load_adapter": ("finetune", "sparse-gin",
                                 lambda run, base: _transformers_load_adapter(base, run)),
    "sparse-gin, PeftModel": ("finetune", "sparse-gin",
                              lambda run, base: peft.PeftModel.from_pretrained(
                                  AutoModelForCausalLM.from_pretrained(base), run)),
    "gin, AutoModelForCausalLM": ("pretrain", "gin",
                                  lambda run, base: AutoModelForCausalLM.from_pretrained(run)),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_saved_weights_reload_with_the_recorded_heldout_loss(loader, saved_runs, tiny_model_dir,
                                                             data_file, tmp_path):
    kind, arm, load = LOADERS[loader]
    run = run_dir(saved_runs / kind, arm, 1)
    recorded = load_run(run, kind)
    assert recorded.seed == 1
    model = load(run, tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir if kind == "finetune" else run)
    final = [e["eval_loss"] for e in recorded.log_history if "eval_loss" in e][-1]
    loss = _heldout_loss(model, tokenizer, data_file, kind, seed=1, tmp_path=tmp_path)
    assert loss == pytest.approx(final, rel=1e-4)
