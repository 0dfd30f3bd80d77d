"""End-to-end comparisons: fine-tuning (Sparse-GIN vs LoRA) and pre-training (GIN/PNA vs
standard attention) on :class:`transformers.Trainer`, with tables and figures."""

from pyg_transformer.experiments.arms import (
    Arm,
)
from pyg_transformer.experiments.compare import (
    compare,
    iter_runs,
    markdown_table,
    summarise,
)
from pyg_transformer.experiments.finetune import (
    FINETUNE_ARMS,
    FINETUNE_METHODS,
    FinetuneSettings,
    define_finetune_arm,
    load_base_model,
    run_finetune,
    sparse_gin_config_for,
)
from pyg_transformer.experiments.pretrain import (
    GRAPH_OPTIONS,
    PRETRAIN_ARMS,
    PRETRAIN_ATTENTIONS,
    PretrainSettings,
    build_matched_config,
    define_pretrain_arm,
    run_pretrain,
)
from pyg_transformer.experiments.settings import (
    ArmResult,
    TrainSettings,
)
from pyg_transformer.experiments.runs import (
    load_run,
    run_dir,
)

#: ``train_arm`` imports torch and transformers: it is imported on first access
_LAZY = {"train_arm": "pyg_transformer.experiments.runner"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Arm",
    "ArmResult",
    "FINETUNE_ARMS",
    "FINETUNE_METHODS",
    "FinetuneSettings",
    "GRAPH_OPTIONS",
    "PRETRAIN_ARMS",
    "PRETRAIN_ATTENTIONS",
    "PretrainSettings",
    "TrainSettings",
    "build_matched_config",
    "compare",
    "define_finetune_arm",
    "define_pretrain_arm",
    "iter_runs",
    "load_base_model",
    "load_run",
    "markdown_table",
    "run_dir",
    "run_finetune",
    "run_pretrain",
    "sparse_gin_config_for",
    "summarise",
    "train_arm",
]
