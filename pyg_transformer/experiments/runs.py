"""The output folder of an experiment: one folder per finished (arm, seed) run, resumable.

Layout of ``out_dir``::

    experiment.json                 the shared configuration (kind, train settings, settings)
                                    and the definition of every arm with runs
    runs/<arm>-seed<N>/result.json  ArmResult.to_dict() of the run
    runs/<arm>-seed<N>/...          its weights: adapter_config.json +
                                    adapter_model.safetensors (fine-tuning), or
                                    config.json + model.safetensors + tokenizer files
                                    (pre-training)
    results.json, results.md, *.png the comparison (written by ``compare``)

A run's files are written into ``runs/<arm>-seed<N>.partial`` and the folder renamed
when all are there, so a run folder with a ``result.json`` is a finished run (the
Trainer may leave an empty one behind when a run is interrupted). Every other file is
replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyg_transformer.experiments.settings import ArmResult, TrainSettings, is_main_process

EXPERIMENT_NAME = "experiment.json"
#: the key of ``experiment.json`` holding each arm's method and options
ARM_DEFINITIONS = "arm_definitions"
RESULT_NAME = "result.json"
RUNS_DIR = "runs"
#: the comparison's files (``compare.write_results`` and ``write_figures``), removed with
#: ``overwrite``
SUMMARY_GLOBS = ("results.json", "results.md", "training_curves.png",
                 "generalization_gap.png", "lambda_*.png", "alpha_per_layer.png")
#: per-run fields of :class:`TrainSettings`, not part of the shared configuration
PER_RUN_FIELDS = ("seed", "output_dir")
#: the files that make a run folder complete, per kind (its result and its weights)
RUN_FILES = {"finetune": (RESULT_NAME, "adapter_config.json", "adapter_model.safetensors"),
             "pretrain": (RESULT_NAME, "config.json", "model.safetensors",
                          "tokenizer_config.json")}


def run_dir(out_dir: str | os.PathLike, arm: str, seed: int) -> Path:
    """``out_dir/runs/<arm>-seed<seed>``: where the run's result and weights go."""
    return Path(out_dir) / RUNS_DIR / f"{arm}-seed{seed}"


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` and make sure a file can be written in it.

    Raises:
        ValueError: ``out_dir`` or one of its parents is a file, or it cannot be created
            or written (e.g. a read-only folder).
    """
    out = Path(out_dir)
    try:
        for folder in (out, *out.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise ValueError(f"output directory {str(out)!r} cannot be created: "
                                     f"{str(folder)!r} is a file")
                break
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write to output directory {str(out)!r}: "
                         f"{error.strerror or error}") from error
    return out


def experiment_config(kind: str, train: TrainSettings, settings: Any,
                      arms: list | None = None) -> dict[str, Any]:
    """The configuration that every run in one output folder shares (JSON-ready).

    ``kind``, the train settings without the per-run ``seed``/``output_dir``, the
    fine-tuning or pre-training settings, and under ``"arm_definitions"`` the method and
    options of each of ``arms`` (:class:`~pyg_transformer.experiments.arms.Arm`). Which
    arms and seeds run is not part of it: each (arm, seed) run is finished or not on its
    own, and an arm's definition only has to match that of its earlier runs.
    """
    train_settings = {k: v for k, v in asdict(train).items() if k not in PER_RUN_FIELDS}
    config = {"kind": kind, "train": train_settings, "settings": asdict(settings),
              ARM_DEFINITIONS: {arm.name: arm.to_dict() for arm in arms or []}}
    return json.loads(json.dumps(config))  # as it reads back from experiment.json


def prepare_output_dir(out_dir: str | os.PathLike, config: dict[str, Any], *,
                       overwrite: bool = False) -> Path:
    """Check ``out_dir`` before training and record ``config`` in ``experiment.json``.

    A folder holding runs of the same configuration is kept (its finished runs resume);
    one holding runs of another configuration is refused, unless ``overwrite``, which
    removes its runs, results and figures first. A folder without runs is used as it is.
    Arm definitions are compared for the arms that have finished runs only; the saved
    definitions of those arms are kept alongside the new ones. Only the main process
    writes.

    Raises:
        ValueError: ``out_dir`` is not writable, or holds runs of another configuration
            (the message names the settings that differ).
    """
    out = check_output_dir(out_dir)
    if overwrite:
        if is_main_process():
            clear_outputs(out)
    else:
        saved = saved_config(out)
        if saved is not None:
            finished = finished_arms(out)
            old = {k: v for k, v in saved.get(ARM_DEFINITIONS, {}).items() if k in finished}
            new = config.get(ARM_DEFINITIONS, {})
            differences = config_differences(
                {**saved, ARM_DEFINITIONS: {k: v for k, v in old.items() if k in new}},
                {**config, ARM_DEFINITIONS: {k: v for k, v in new.items() if k in old}})
            if differences:
                raise ValueError(f"output directory {str(out)!r} holds runs of another "
                                 f"configuration ({'; '.join(differences)}); {_REPLACE_HINT}")
            config = {**config, ARM_DEFINITIONS: {**old, **new}}
    if is_main_process():
        write_json(out / EXPERIMENT_NAME, config)
    return out


_REPLACE_HINT = ("rerun with --overwrite (overwrite=True in Python) to replace them, or "
                 "choose another output directory")


def holds_runs(out_dir: Path) -> bool:
    """Whether ``out_dir`` has ``results.json`` or a run folder with a ``result.json`` (an
    interrupted run's folder or save, ``*.partial``, does not count)."""
    runs = out_dir / RUNS_DIR
    return ((out_dir / "results.json").exists()
            or runs.is_dir() and any((p / RESULT_NAME).is_file() for p in runs.iterdir()
                                     if not p.name.endswith(".partial")))


def finished_arms(out_dir: Path) -> set[str]:
    """The arms with at least one finished run (``runs/<arm>-seed<N>/result.json``)."""
    runs = out_dir / RUNS_DIR
    if not runs.is_dir():
        return set()
    return {match[1] for path in runs.iterdir()
            if (match := re.fullmatch(r"(.+)-seed\d+", path.name))
            and (path / RESULT_NAME).is_file()}


def saved_config(out_dir: Path) -> dict[str, Any] | None:
    """The configuration of the runs in ``out_dir`` (its ``experiment.json``); ``None``
    when it holds no runs.

    Raises:
        ValueError: the folder holds runs or results but no ``experiment.json``.
    """
    if not holds_runs(out_dir):
        return None
    path = out_dir / EXPERIMENT_NAME
    if not path.is_file():
        raise ValueError(f"output directory {str(out_dir)!r} holds runs or results of an "
                         f"unknown configuration (no {EXPERIMENT_NAME}); {_REPLACE_HINT}")
    return json.loads(path.read_text())


def config_differences(saved: dict[str, Any], requested: dict[str, Any],
                       prefix: str = "") -> list[str]:
    """``"key: saved -> requested"`` for every (nested) key whose value differs."""
    differences = []
    for key in sorted(set(saved) | set(requested), key=str):
        old, new = saved.get(key, "<unset>"), requested.get(key, "<unset>")
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return differences


def clear_outputs(out_dir: Path) -> None:
    """Remove the runs, ``experiment.json``, results and figures of ``out_dir`` (only them)."""
    shutil.rmtree(out_dir / RUNS_DIR, ignore_errors=True)
    for pattern in (EXPERIMENT_NAME, *SUMMARY_GLOBS):
        for path in out_dir.glob(pattern):
            path.unlink()


def load_run(directory: str | os.PathLike, kind: str) -> ArmResult | None:
    """The :class:`ArmResult` of a finished run folder; ``None`` if it is not complete."""
    directory = Path(directory)
    if not all((directory / name).is_file() for name in RUN_FILES[kind]):
        return None
    return ArmResult.from_dict(json.loads((directory / RESULT_NAME).read_text()))


def save_run(directory: str | os.PathLike, result: ArmResult, model, tokenizer=None) -> Path:
    """Write ``model.save_pretrained``, ``tokenizer.save_pretrained`` (when given) and
    ``result.json`` into ``directory``, replacing it.

    The files go into ``<directory>.partial`` first, renamed to ``directory`` when all are
    written, so an interrupted save never leaves a folder that looks finished.
    """
    final = Path(directory)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    write_json(partial / RESULT_NAME, result.to_dict())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` atomically: write a temporary file next to it, then rename."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False, encoding="utf-8")
    try:
        with handle:
            handle.write(text)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """:func:`write_text` of ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2) + "\n")
