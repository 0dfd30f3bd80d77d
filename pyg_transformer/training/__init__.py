"""Training on :class:`transformers.Trainer`: collator, graph-scalar logging, evaluation."""

from pyg_transformer.training.callbacks import (
    ConciseProgressCallback,
    GraphParameterCallback,
    find_graph_parameters,
    graph_scalars,
)
from pyg_transformer.training.collator import (
    IGNORE_INDEX,
    PromptCompletionCollator,
    encode_dataset,
    encode_prompt,
)
from pyg_transformer.training.evaluation import (
    best_eval_loss,
    exact_match_accuracy,
    generalization_gap,
    generate_completions,
    loss_curves,
    perplexity,
)

__all__ = [
    "ConciseProgressCallback",
    "GraphParameterCallback",
    "IGNORE_INDEX",
    "PromptCompletionCollator",
    "best_eval_loss",
    "encode_dataset",
    "encode_prompt",
    "exact_match_accuracy",
    "find_graph_parameters",
    "generalization_gap",
    "generate_completions",
    "graph_scalars",
    "loss_curves",
    "perplexity",
]
