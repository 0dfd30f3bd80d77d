"""Configuration of the GIN-/PNA-Attention Llama (Buehler 2025, §2.1.2-2.1.3)."""

from __future__ import annotations

import math
import warnings

from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import LlamaConfig
from transformers.activations import ACT2FN

from pyg_transformer.attention.adjacency import (
    ADJACENCY_ACTIVATIONS,
    SPARSE_ACTIVATIONS,
    TAU_ACTIVATIONS,
)
from pyg_transformer.graph.validation import (
    check_positive_finite,
    check_positive_int,
    is_number,
)
from pyg_transformer.options import GRAPH_DEFAULTS

ATTENTION_TYPES = ("standard", "gin", "pna")
PNA_AGGREGATORS = ("sum", "mean", "max", "var")
GRAPH_BACKENDS = ("auto", "dense", "pyg")


class GraphLlamaConfig(LlamaConfig):
    r"""Configuration of :class:`~pyg_transformer.GraphLlamaForCausalLM`.

    A :class:`transformers.LlamaConfig` plus the graph-attention options below. Per layer
    ``l`` and head ``h`` (``X_h`` the head's slice of the normed layer input):

    .. math::
        S_h = \alpha_l \frac{Q_h K_h^\top}{\sqrt{d}}, \qquad
        A'_h = \operatorname{act}(S_h) \odot M_{\text{causal}}, \qquad
        X'_h = \operatorname{MLP}_h(\epsilon_h X_h + A'_h X_h)

    Args:
        attention_type: ``"standard"`` (plain Llama attention, the paper's reference
            model), ``"gin"`` (GIN-Attention) or ``"pna"`` (PNA-Attention).
        adjacency_activation: ``"softmax"``; ``"sigmoid"``:
            :math:`\sigma(\beta (S - \tau))`; ``"sharp_softplus"``:
            :math:`\log(1 + e^{\beta (S - \tau)}) / \beta`; ``"relu_threshold"``:
            :math:`\mathrm{ReLU}(\mathrm{softmax}(S) - \tau)`; ``"top_k"``: the
            ``adjacency_top_k`` largest :math:`\mathrm{softmax}(S)` of each row (other
            entries 0).
        sharpening: if ``True`` the per-layer sharpening :math:`\alpha_l` is trainable
            (stored as :math:`\log \alpha_l`, so it stays positive); else it is fixed.
        sharpening_init: initial (or fixed) value of :math:`\alpha_l`, ``> 0``.
        adjacency_beta: :math:`\beta > 0` of ``sigmoid`` and ``sharp_softplus``.
        adjacency_tau: :math:`\tau` of ``sigmoid``, ``sharp_softplus`` and
            ``relu_threshold``.
        adjacency_tau_trainable: make :math:`\tau` a trainable per-layer scalar (only
            with an activation that reads it).
        adjacency_top_k: ``k`` of ``"top_k"``: an int ``>= 1`` (keys kept per query) or
            a float in ``(0, 1]`` (:math:`\lceil k (i + 1) \rceil` of row ``i``'s causal
            keys, at least 1). Required by, and only allowed with,
            ``adjacency_activation="top_k"``. Its old name ``top_k`` (the sampling
            ``top_k`` of generation) is still accepted, with a ``FutureWarning``, and
            configs saved with it load with the value moved here.
        gin_mlp_multiplier: :math:`\gamma > 0`; the per-head MLPs (GIN and PNA) have
            ``int(gamma * d) >= 1`` hidden units.
        gin_eps_init: initial :math:`\epsilon_h` of the GIN update (trainable).
        use_o_proj: apply an output projection after concatenating the heads (GIN and
            PNA; the standard model always has one).
        value_projection: aggregate a value projection :math:`V_h = (X W_V)_h` instead
            of :math:`X_h` (GIN and PNA; the paper's GIN has none).
        pna_aggregators: non-empty subset of ``("sum", "mean", "max", "var")``, in the
            order concatenated.
        pna_blend: blend with standard attention:
            :math:`Y = (1 - \lambda) Y_{attn} + \lambda Y_{pna}`, :math:`\lambda \in [0, 1]`
            trainable (``sigmoid`` of a logit, initialised to 0.5).
        graph_backend: ``"dense"`` (SDPA for softmax, chunked explicit scores
            otherwise), ``"pyg"`` (per-head causal graphs and PyG message passing) or
            ``"auto"`` (PyG for the sparse activations ``relu_threshold`` and ``top_k``,
            dense otherwise).

    The GIN MLP dropout is ``attention_dropout``. Invalid values raise ``ValueError``
    (a value of the wrong type for a :class:`~transformers.LlamaConfig` field:
    ``TypeError``), naming the field and the value; this includes the Llama fields the
    graph models read: ``vocab_size``, ``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``
    and ``max_position_embeddings`` (ints ``>= 1``), ``rms_norm_eps``,
    ``initializer_range`` and ``rope_theta`` (positive finite), ``attention_dropout``
    (``None`` or in ``[0, 1)``) and ``hidden_act`` (a key of transformers' ``ACT2FN``).
    """

    model_type = "graph_llama"

    attention_type: str = GRAPH_DEFAULTS["attention_type"]
    adjacency_activation: str = GRAPH_DEFAULTS["adjacency_activation"]
    sharpening: bool = GRAPH_DEFAULTS["sharpening"]
    sharpening_init: float = GRAPH_DEFAULTS["sharpening_init"]
    adjacency_beta: float = GRAPH_DEFAULTS["adjacency_beta"]
    adjacency_tau: float = GRAPH_DEFAULTS["adjacency_tau"]
    adjacency_tau_trainable: bool = GRAPH_DEFAULTS["adjacency_tau_trainable"]
    adjacency_top_k: int | float | None = GRAPH_DEFAULTS["adjacency_top_k"]
    gin_mlp_multiplier: float = GRAPH_DEFAULTS["gin_mlp_multiplier"]
    gin_eps_init: float = GRAPH_DEFAULTS["gin_eps_init"]
    use_o_proj: bool = GRAPH_DEFAULTS["use_o_proj"]
    value_projection: bool = GRAPH_DEFAULTS["value_projection"]
    pna_aggregators: list[str] | tuple[str, ...] = GRAPH_DEFAULTS["pna_aggregators"]
    pna_blend: bool = GRAPH_DEFAULTS["pna_blend"]
    graph_backend: str = GRAPH_DEFAULTS["graph_backend"]

    def __post_init__(self, **kwargs):
        # before PreTrainedConfig.__post_init__, which drops generation keys such as top_k
        self._take_legacy_top_k(kwargs)
        # LlamaConfig.__post_init__ divides hidden_size by num_attention_heads
        check_positive_int("num_attention_heads", self.num_attention_heads)
        super().__post_init__(**kwargs)
        if isinstance(self.pna_aggregators, tuple):
            self.pna_aggregators = list(self.pna_aggregators)
        self.validate_graph_options()

    def __setattr__(self, name, value):
        # LlamaConfig's @strict field checks raise huggingface_hub's
        # StrictDataclassFieldValidationError (not a ValueError/TypeError): re-raise its cause
        try:
            super().__setattr__(name, value)
        except StrictDataclassFieldValidationError as error:
            cause = error.__cause__
            kind = TypeError if isinstance(cause, TypeError) else ValueError
            raise kind(f"invalid {name}={value!r}: {cause}") from error

    def _take_legacy_top_k(self, kwargs: dict) -> None:
        """Move the deprecated ``top_k`` keyword (configs saved before the rename) to
        ``adjacency_top_k``.

        As transformers does for ``rope_scaling``, a ``FutureWarning``; the old default
        ``"top_k": null`` that every old ``config.json`` holds is dropped silently (as
        transformers does for ``torch_dtype``).

        Raises:
            ValueError: ``top_k`` and ``adjacency_top_k`` both given, with different values.
        """
        if "top_k" not in kwargs:
            return
        value = kwargs.pop("top_k")
        if value is None:
            return
        warnings.warn(
            "GraphLlamaConfig: `top_k` is deprecated and will be removed in a future "
            "version of pyg_transformer; use `adjacency_top_k` (the adjacency's k; `top_k` "
            "is generation's sampling option). Saving the config again writes the new name.",
            FutureWarning,
            stacklevel=4,
        )
        if self.adjacency_top_k is not None and self.adjacency_top_k != value:
            raise ValueError(
                f"got both adjacency_top_k={self.adjacency_top_k!r} and its deprecated name "
                f"top_k={value!r}; give adjacency_top_k only"
            )
        self.adjacency_top_k = value

    def validate_graph_options(self) -> None:
        """Check every option, the inherited Llama fields included.

        Raises:
            ValueError: naming the bad field and value.
        """
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            check_positive_int(name, getattr(self, name))
        self.validate_architecture()  # LlamaConfig: hidden_size % num_attention_heads
        for name in ("rms_norm_eps", "initializer_range"):
            check_positive_finite(name, getattr(self, name))
        rope = self.rope_parameters
        if isinstance(rope, dict) and "rope_theta" in rope:
            check_positive_finite("rope_theta", rope["rope_theta"])
        dropout = self.attention_dropout
        if dropout is not None and (not is_number(dropout) or not 0 <= dropout < 1):
            raise ValueError(f"attention_dropout must be None or in [0, 1), got {dropout!r}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(
                f"hidden_act must be one of transformers' activations {sorted(ACT2FN)}, "
                f"got {self.hidden_act!r}"
            )
        choices = (
            ("attention_type", ATTENTION_TYPES),
            ("adjacency_activation", ADJACENCY_ACTIVATIONS),
            ("graph_backend", GRAPH_BACKENDS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("sharpening", "adjacency_tau_trainable", "use_o_proj",
                     "value_projection", "pna_blend"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.attention_type != "standard":
            head_dim = self.hidden_size // self.num_attention_heads
            if self.head_dim != head_dim:
                raise ValueError(
                    f"head_dim must equal hidden_size // num_attention_heads = {head_dim} "
                    f"for attention_type={self.attention_type!r} (each head aggregates its "
                    f"slice of the hidden state), got {self.head_dim!r}"
                )
        for name in ("sharpening_init", "adjacency_beta"):
            check_positive_finite(name, getattr(self, name))
        for name in ("adjacency_tau", "gin_eps_init"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.adjacency_tau_trainable and self.adjacency_activation not in TAU_ACTIVATIONS:
            raise ValueError(
                f"adjacency_tau_trainable=True needs an activation that reads tau "
                f"{TAU_ACTIVATIONS}, got adjacency_activation={self.adjacency_activation!r}"
            )
        if self.adjacency_activation == "top_k":
            k = self.adjacency_top_k
            if isinstance(k, bool) or not (
                (isinstance(k, int) and k >= 1) or (isinstance(k, float) and 0 < k <= 1)
            ):
                raise ValueError(
                    f"adjacency_top_k must be an int >= 1 or a float in (0, 1] with "
                    f"adjacency_activation='top_k', got {k!r}"
                )
        elif self.adjacency_top_k is not None:
            raise ValueError(
                f"adjacency_top_k is only used with adjacency_activation='top_k' (got "
                f"{self.adjacency_activation!r}); got adjacency_top_k={self.adjacency_top_k!r}"
            )
        gamma = self.gin_mlp_multiplier
        if not is_number(gamma) or not 0 < gamma < math.inf:
            raise ValueError(f"gin_mlp_multiplier must be a positive number, got {gamma!r}")
        if self.attention_type != "standard" and self.gin_mlp_hidden_size < 1:
            raise ValueError(
                f"gin_mlp_multiplier * head_dim must be >= 1, got {gamma!r} * "
                f"{self.head_dim}"
            )
        aggs = self.pna_aggregators
        if (
            not isinstance(aggs, (list, tuple))
            or len(aggs) == 0
            or any(a not in PNA_AGGREGATORS for a in aggs)
            or len(set(aggs)) != len(aggs)
        ):
            raise ValueError(
                f"pna_aggregators must be a non-empty list of distinct names from "
                f"{PNA_AGGREGATORS}, got {aggs!r}"
            )
        if self.pna_blend and self.attention_type != "pna":
            raise ValueError(
                f"pna_blend=True needs attention_type='pna', got {self.attention_type!r}"
            )

    @property
    def gin_mlp_hidden_size(self) -> int:
        """Hidden units of each per-head MLP, ``int(gin_mlp_multiplier * head_dim)``."""
        return int(self.gin_mlp_multiplier * self.head_dim)

    @property
    def resolved_graph_backend(self) -> str:
        """``graph_backend`` with ``"auto"`` resolved to ``"dense"`` or ``"pyg"``."""
        if self.graph_backend != "auto":
            return self.graph_backend
        return "pyg" if self.adjacency_activation in SPARSE_ACTIVATIONS else "dense"


__all__ = ["GraphLlamaConfig"]
