"""Configuration of the Sparse-GIN adapter (a GNN over a frozen LM's attention graph)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from peft import PeftConfig, TaskType

from pyg_transformer.compat import sparse_gin_peft_type
from pyg_transformer.graph.validation import (
    check_positive_finite,
    check_positive_int,
    is_number,
)
from pyg_transformer.options import (
    GNN_TYPES,
    HEAD_REDUCTIONS,
    SCALE_INITS,
    SPARSE_GIN_DEFAULTS,
)

#: the trainable-parameter counters :meth:`SparseGinConfig.match_lora` uses, ``"lora"``:
#: ``(model, lora_config) -> int`` and ``"sparse_gin"``: ``(model, config) -> int``. They
#: need the adapter modules, which import this module, so
#: :func:`~pyg_transformer.adapters.sparse_gin.registration.register_sparse_gin` (run when
#: the package is imported) sets them.
PARAMETER_COUNTERS: dict[str, Callable] = {}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class SparseGinConfig(PeftConfig):
    r"""Configuration of a Sparse-GIN adapter: a small GNN after each attention block of a
    frozen causal LM, passing messages over the model's own sparsified attention graph.

    Per adapted decoder layer :math:`l`, with :math:`A_h` the frozen model's attention
    probabilities of head :math:`h`:

    .. math::
        A' = \sigma\bigl(\alpha(\min(1, \operatorname{reduce}_h A_h) - \tau)\bigr),
        \quad \mathcal{E} = \{(j \to i): j \le i,\ A'_{ij} > \varepsilon\}

    .. math::
        X \leftarrow X + \lambda_l\, \operatorname{RMSNorm}\bigl(
        \operatorname{GNN}(X, A')\bigr)

    with :math:`X` the residual stream right after the attention block.

    Args:
        hidden_dim: adapter hidden size :math:`g` (``Linear_in: D -> g``).
        num_gnn_layers: number of GNN layers per adapted decoder layer.
        gnn_type: ``"gin"`` (:class:`~pyg_transformer.nn.WeightedGINConv`) or ``"pna"``
            (:class:`torch_geometric.nn.PNAConv` with the edge weight as a 1-dim
            ``edge_attr``).
        head_reduction: ``"sum"``, ``"mean"`` or ``"max"`` over attention heads.
        alpha: sigmoid sharpening slope :math:`\alpha`.
        tau: sigmoid sharpening shift :math:`\tau`.
        epsilon: keep edges with :math:`A'_{ij} > \varepsilon` (in ``[0, 1)``).
        top_k: keep at most the ``k`` strongest kept edges per query (``None``: all).
        scale_init: initial :math:`\lambda_l`: ``"linear"`` from 0 (first decoder layer)
            to ``scale_max`` (last), ``"constant"`` (all ``scale_max``) or ``"zero"``
            (the adapted model starts identical to the base model).
        scale_max: see ``scale_init``.
        trainable_scale: train :math:`\lambda_l`.
        target_layers: decoder layer indices to adapt (``None``: all).
        detach_adjacency: if ``False``, gradients flow through the edge weights into the
            frozen model's queries and keys.
        cross_token_edges: if ``False``, every edge between two different tokens is
            removed and only the self-loops :math:`w_{ii}` stay: the same parameters, no
            message between tokens (the ablation that isolates message passing).
        chunk_size: query rows whose attention probabilities are recomputed at once.
        dropout: dropout inside each GIN MLP (after the ReLU), or on each PNA layer's
            output.
    """

    hidden_dim: int = field(default=SPARSE_GIN_DEFAULTS["hidden_dim"], metadata={"help": "adapter hidden size g"})
    num_gnn_layers: int = field(default=SPARSE_GIN_DEFAULTS["num_gnn_layers"], metadata={"help": "GNN layers per decoder layer"})
    gnn_type: str = field(default=SPARSE_GIN_DEFAULTS["gnn_type"], metadata={"help": "'gin' or 'pna'"})
    head_reduction: str = field(default=SPARSE_GIN_DEFAULTS["head_reduction"], metadata={"help": "'sum', 'mean' or 'max'"})
    alpha: float = field(default=SPARSE_GIN_DEFAULTS["alpha"], metadata={"help": "sharpening slope"})
    tau: float = field(default=SPARSE_GIN_DEFAULTS["tau"], metadata={"help": "sharpening shift"})
    epsilon: float = field(default=SPARSE_GIN_DEFAULTS["epsilon"], metadata={"help": "edge threshold in [0, 1)"})
    top_k: int | None = field(default=SPARSE_GIN_DEFAULTS["top_k"], metadata={"help": "max edges per query"})
    scale_init: str = field(default=SPARSE_GIN_DEFAULTS["scale_init"], metadata={"help": "'linear', 'constant', 'zero'"})
    scale_max: float = field(default=SPARSE_GIN_DEFAULTS["scale_max"], metadata={"help": "largest initial lambda"})
    trainable_scale: bool = field(default=SPARSE_GIN_DEFAULTS["trainable_scale"], metadata={"help": "train lambda"})
    target_layers: list[int] | None = field(
        default=SPARSE_GIN_DEFAULTS["target_layers"], metadata={"help": "decoder layer indices to adapt (None: all)"}
    )
    detach_adjacency: bool = field(default=SPARSE_GIN_DEFAULTS["detach_adjacency"], metadata={"help": "no grad through A'"})
    cross_token_edges: bool = field(
        default=SPARSE_GIN_DEFAULTS["cross_token_edges"],
        metadata={"help": "keep edges between different tokens (False: self-loops only, the "
                          "no-message ablation)"},
    )
    chunk_size: int = field(default=SPARSE_GIN_DEFAULTS["chunk_size"], metadata={"help": "query rows per chunk"})
    dropout: float = field(default=SPARSE_GIN_DEFAULTS["dropout"], metadata={"help": "dropout in the GNN layers"})

    def __post_init__(self):
        if self.task_type is None:
            self.task_type = TaskType.CAUSAL_LM
        super().__post_init__()
        self.peft_type = sparse_gin_peft_type()
        self.validate()

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: naming the offending field and value.
        """
        check_positive_int("hidden_dim", self.hidden_dim)
        check_positive_int("num_gnn_layers", self.num_gnn_layers)
        if self.gnn_type not in GNN_TYPES:
            raise ValueError(f"gnn_type must be one of {GNN_TYPES}, got {self.gnn_type!r}")
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise ValueError(
                f"head_reduction must be one of {HEAD_REDUCTIONS}, got {self.head_reduction!r}"
            )
        check_positive_finite("alpha", self.alpha)
        if not is_number(self.tau) or self.tau != self.tau or abs(self.tau) == float("inf"):
            raise ValueError(f"tau must be a finite number, got {self.tau!r}")
        if not is_number(self.epsilon) or not 0 <= self.epsilon < 1:
            raise ValueError(f"epsilon must be a number in [0, 1), got {self.epsilon!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {self.top_k!r}")
        if self.scale_init not in SCALE_INITS:
            raise ValueError(f"scale_init must be one of {SCALE_INITS}, got {self.scale_init!r}")
        if not is_number(self.scale_max) or not abs(self.scale_max) < float("inf"):
            raise ValueError(f"scale_max must be a finite number, got {self.scale_max!r}")
        if not isinstance(self.trainable_scale, bool):
            raise ValueError(f"trainable_scale must be a bool, got {self.trainable_scale!r}")
        if self.target_layers is not None:
            if isinstance(self.target_layers, (str, bytes)) or not all(
                _is_int(i) and i >= 0 for i in self.target_layers
            ) or len(self.target_layers) == 0:
                raise ValueError(
                    "target_layers must be None or a non-empty list of layer indices >= 0, "
                    f"got {self.target_layers!r}"
                )
            self.target_layers = sorted(set(self.target_layers))
        if not isinstance(self.cross_token_edges, bool):
            raise ValueError(f"cross_token_edges must be a bool, got {self.cross_token_edges!r}")
        if not isinstance(self.detach_adjacency, bool):
            raise ValueError(f"detach_adjacency must be a bool, got {self.detach_adjacency!r}")
        check_positive_int("chunk_size", self.chunk_size)
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")

    @classmethod
    def match_lora(cls, model, lora_config, **kwargs) -> SparseGinConfig:
        """A config whose ``hidden_dim`` makes the adapter's trainable-parameter count as
        close as possible to that of ``lora_config`` applied to ``model``.

        Args:
            model: the (frozen) Hugging Face causal LM both adapters would be attached to.
            lora_config: a :class:`peft.LoraConfig`.
            **kwargs: the other :class:`SparseGinConfig` fields (``hidden_dim`` is chosen).
        """
        if not PARAMETER_COUNTERS:
            raise RuntimeError("SparseGinConfig.match_lora needs the parameter counters: "
                               "import pyg_transformer.adapters first")
        count_lora_parameters = PARAMETER_COUNTERS["lora"]
        count_sparse_gin_parameters = PARAMETER_COUNTERS["sparse_gin"]
        kwargs.pop("hidden_dim", None)
        target = count_lora_parameters(model, lora_config)
        low, high = 1, 1
        while count_sparse_gin_parameters(model, cls(hidden_dim=high, **kwargs)) < target:
            high *= 2
        while low < high:  # smallest g whose count reaches the target
            mid = (low + high) // 2
            if count_sparse_gin_parameters(model, cls(hidden_dim=mid, **kwargs)) < target:
                low = mid + 1
            else:
                high = mid
        candidates = [g for g in (low - 1, low) if g >= 1]
        best = min(
            candidates,
            key=lambda g: abs(count_sparse_gin_parameters(model, cls(hidden_dim=g, **kwargs)) - target),
        )
        return cls(hidden_dim=best, **kwargs)
