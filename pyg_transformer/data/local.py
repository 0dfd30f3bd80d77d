"""User data: any local JSON / JSONL / CSV / parquet file, loaded with ``datasets``."""

from __future__ import annotations

import os
from pathlib import Path

from pyg_transformer.data.gsm8k import format_completion, format_prompt

#: File suffix -> ``datasets`` builder.
FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
TASKS = ("finetune", "pretrain")


def _check_strings(dataset, column: str) -> None:
    for index, value in enumerate(dataset[column]):
        if not isinstance(value, str):
            raise ValueError(
                f"column {column!r} must hold strings, row {index} has {type(value).__name__}: "
                f"{value!r}")


def _check_not_all_empty(dataset, columns: tuple[str, ...], path: Path) -> None:
    """Raise ``ValueError`` if every row has only blank strings in ``columns``."""
    rows = zip(*(dataset[column] for column in columns))
    if all(not "".join(values).strip() for values in rows):
        names = " and ".join(repr(column) for column in columns)
        raise ValueError(f"{names} of {str(path)!r} {'is' if len(columns) == 1 else 'are'} "
                         "empty in every row: nothing to train on")


def load_local_dataset(
    path: str | os.PathLike,
    task: str = "finetune",
    *,
    tokenizer=None,
    system_prompt: str | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
):
    r"""Load a local data file as a :class:`datasets.DatasetDict` ready for training.

    The format follows the suffix: ``.json``/``.jsonl`` (records or JSON lines), ``.csv``,
    ``.parquet``/``.pq``. Column contract:

    * ``task="finetune"`` needs ``prompt`` and ``completion`` (used verbatim), or
      ``question`` and ``answer`` (formatted like GSM8K by
      :func:`~pyg_transformer.data.format_prompt` /
      :func:`~pyg_transformer.data.format_completion`, with ``tokenizer``'s chat template
      when it has one). The loss is on the completion only.
    * ``task="pretrain"`` uses ``text`` when present, else one of the pairs above
      (``text = prompt + completion``). The loss is on the whole text.

    The result has string columns ``prompt``, ``completion`` (fine-tuning) and ``text``
    (both tasks; ``prompt + completion`` for fine-tuning data) next to the file's own
    columns, and a ``"train"`` split plus a ``"test"`` split of ``test_fraction`` of the
    rows (shuffled with ``seed``; no ``"test"`` when ``test_fraction == 0``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a folder, an unknown suffix, an empty file or one without rows,
            missing or non-string required columns, a trained column (``completion`` or
            ``answer`` for fine-tuning, ``text`` or both of a pair for pre-training) empty
            in every row, a bad ``task`` or ``test_fraction``.
    """
    from datasets import DatasetDict, load_dataset_builder

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"expected a data file, got a folder: {str(path)!r}")
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"unknown data format {path.suffix!r} of {str(path)!r}; "
                         f"supported suffixes: {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"data file is empty: {str(path)!r}")
    try:  # load_dataset's steps, to see an empty split before reading it
        reader = load_dataset_builder(builder, data_files=str(path))
        reader.download_and_prepare()
        empty = not reader.info.splits["train"].num_examples
        dataset = None if empty else reader.as_dataset(split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise ValueError(f"could not read {str(path)!r} as {builder}: {exc}") from exc
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"data file has no rows: {str(path)!r}")

    columns = set(dataset.column_names)
    if task == "pretrain" and "text" in columns:
        _check_strings(dataset, "text")
        _check_not_all_empty(dataset, ("text",), path)
    elif {"prompt", "completion"} <= columns:
        for column in ("prompt", "completion"):
            _check_strings(dataset, column)
        trained = ("completion",) if task == "finetune" else ("prompt", "completion")
        _check_not_all_empty(dataset, trained, path)
    elif {"question", "answer"} <= columns:
        for column in ("question", "answer"):
            _check_strings(dataset, column)
        trained = ("answer",) if task == "finetune" else ("question", "answer")
        _check_not_all_empty(dataset, trained, path)
        dataset = dataset.map(lambda row: {
            "prompt": format_prompt(row["question"], tokenizer, system_prompt),
            "completion": format_completion(row["answer"], tokenizer)})
    else:
        needed = "'text', or " if task == "pretrain" else ""
        raise ValueError(
            f"{str(path)!r} needs the columns {needed}'prompt' and 'completion', or 'question' "
            f"and 'answer' for task={task!r}; it has {sorted(columns)}")
    if "text" not in columns or task == "finetune":
        dataset = dataset.map(lambda row: {"text": row["prompt"] + row["completion"]})

    if test_fraction == 0:
        return DatasetDict({"train": dataset})
    if len(dataset) < 2:
        raise ValueError(f"need at least 2 rows to hold out test_fraction={test_fraction}, "
                         f"{str(path)!r} has {len(dataset)}")
    num_test = max(1, round(test_fraction * len(dataset)))
    return dataset.train_test_split(test_size=num_test, seed=seed)
