"""End-to-end comparisons: fine-tuning (Sparse-GIN vs LoRA) and pre-training (GIN/PNA vs
standard attention) on :class:`transformers.Trainer`, with tables and figures."""

from pyg_transformer.experiments.compare import compare, iter_runs, markdown_table, summarise
from pyg_transformer.experiments.finetune import (
    FINETUNE_METHODS,
    FinetuneSettings,
    load_base_model,
    run_finetune,
)
from pyg_transformer.experiments.pretrain import (
    PRETRAIN_ATTENTIONS,
    PretrainSettings,
    build_matched_config,
    run_pretrain,
)
from pyg_transformer.experiments.runner import ArmResult, TrainSettings, train_arm
from pyg_transformer.experiments.runs import load_run, run_dir

__all__ = [
    "FINETUNE_METHODS",
    "PRETRAIN_ATTENTIONS",
    "ArmResult",
    "FinetuneSettings",
    "PretrainSettings",
    "TrainSettings",
    "build_matched_config",
    "compare",
    "iter_runs",
    "load_base_model",
    "load_run",
    "markdown_table",
    "run_dir",
    "run_finetune",
    "run_pretrain",
    "summarise",
    "train_arm",
]
