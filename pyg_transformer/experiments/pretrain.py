"""Pre-training arms: GIN-, PNA- and standard-attention Llamas of matched size, from scratch."""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from pyg_transformer.experiments.arms import Arm, define_arm
from pyg_transformer.options import GRAPH_DEFAULTS
from pyg_transformer.experiments.runs import save_run
from pyg_transformer.experiments.settings import (
    ArmResult,
    TrainSettings,
    check_int_fields,
    is_main_process,
)

logger = logging.getLogger(__name__)

#: what a pre-training arm trains; also the arms that ``compare pretrain`` runs by default
PRETRAIN_ATTENTIONS = ("gin", "pna", "standard")
#: the built-in data sets of :class:`PretrainSettings` (besides local files)
PRETRAIN_DATA = ("gsm", "protein")
#: the graph options of :class:`~pyg_transformer.GraphLlamaConfig` that settings and arms
#: may set (GIN and PNA arms; the standard arm has none)
GRAPH_OPTIONS = ("adjacency_activation", "sharpening", "sharpening_init", "adjacency_beta",
                 "adjacency_tau", "adjacency_tau_trainable", "adjacency_top_k",
                 "gin_mlp_multiplier", "gin_eps_init", "use_o_proj", "value_projection",
                 "pna_aggregators", "pna_blend", "graph_backend")
#: the built-in pre-training arms: the reference, the paper's best GIN and PNA, and the
#: variants of its Fig. 6; their options override the settings' graph options. Any GIN/PNA
#: arm's name followed by ``-gamma<G>`` (e.g. ``gin-gamma0.25``) is that arm with
#: ``gin_mlp_multiplier=G`` (Fig. 8).
PRETRAIN_ARMS = {arm.name: arm for arm in (
    Arm("gin", "gin"),
    Arm("gin-no-sharpening", "gin", {"sharpening": False}),
    Arm("gin-o-proj", "gin", {"use_o_proj": True}),
    Arm("gin-sharp-softplus", "gin", {"adjacency_activation": "sharp_softplus"}),
    Arm("pna", "pna"),
    Arm("pna-sharp-softplus", "pna", {"adjacency_activation": "sharp_softplus"}),
    Arm("pna-blend", "pna", {"pna_blend": True}),
    Arm("standard", "standard"),
)}
#: graph options renamed in :data:`GRAPH_OPTIONS` -> their new names (old names still
#: accepted, with a ``FutureWarning``)
OLD_GRAPH_OPTIONS = {"top_k": "adjacency_top_k"}
_GAMMA_ARM = re.compile(r"(?P<base>.+)-gamma(?P<gamma>[0-9]*\.?[0-9]+)\Z")


def graph_option_types() -> dict[str, str]:
    """:data:`GRAPH_OPTIONS` -> their annotation strings."""
    from pyg_transformer.models import GraphLlamaConfig

    return {name: GraphLlamaConfig.__annotations__[name] for name in GRAPH_OPTIONS}


def graph_defaults() -> dict[str, Any]:
    """The default of every :data:`GRAPH_OPTIONS` option (lists for tuples; no torch
    import)."""
    return {name: _plain(GRAPH_DEFAULTS[name]) for name in GRAPH_OPTIONS}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _renamed(key: str, where: str) -> str:
    """``key``, or the new name of an :data:`OLD_GRAPH_OPTIONS` key (with a warning)."""
    if key not in OLD_GRAPH_OPTIONS:
        return key
    new = OLD_GRAPH_OPTIONS[key]
    warnings.warn(f"{where}: graph option {key!r} is deprecated, use {new!r}",
                  FutureWarning, stacklevel=3)
    return new


def check_graph_options(options: dict[str, Any], attention: str, where: str,
                        settings: PretrainSettings | None = None) -> dict[str, Any]:
    """``options`` checked by building a :class:`~pyg_transformer.GraphLlamaConfig` of
    ``attention`` with them (the shape of ``settings``, else a small one).

    Raises:
        ValueError: prefixed with ``where``, naming an unknown option or a bad value.
    """
    from pyg_transformer.models import GraphLlamaConfig

    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a dict of GraphLlamaConfig options, got "
                         f"{options!r}")
    options = {_renamed(key, where): value for key, value in options.items()}
    unknown = [key for key in options if key not in GRAPH_OPTIONS]
    if unknown:
        raise ValueError(f"{where}: unknown graph option {unknown[0]!r} (options: "
                         f"{', '.join(GRAPH_OPTIONS)})")
    shape = settings or PretrainSettings()
    try:
        GraphLlamaConfig(attention_type=attention, vocab_size=8,
                         hidden_size=shape.hidden_size, num_attention_heads=shape.num_heads,
                         num_key_value_heads=shape.num_kv_heads, num_hidden_layers=1,
                         intermediate_size=shape.intermediate_size, **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    return {key: _plain(value) for key, value in options.items()}


def pretrain_arm(arm: str | Arm, settings: PretrainSettings | None = None) -> Arm:
    """The built-in arm called ``arm`` (see :data:`PRETRAIN_ARMS`, ``-gamma<G>`` names
    included), or ``arm`` checked; with ``settings``, its options merged with the
    settings' are checked too.

    Raises:
        ValueError: an unknown name or method, options on the standard arm, or a bad
            option value.
    """
    if isinstance(arm, str):
        name, match = arm, _GAMMA_ARM.match(arm)
        if name in PRETRAIN_ARMS:
            arm = PRETRAIN_ARMS[name]
        elif match and match["base"] in PRETRAIN_ARMS:
            base = PRETRAIN_ARMS[match["base"]]
            arm = Arm(name, base.method,
                      {**base.options, "gin_mlp_multiplier": float(match["gamma"])})
        else:
            raise ValueError(f"unknown pre-training arm {name!r}; built-in arms: "
                             f"{', '.join(PRETRAIN_ARMS)}, or one of them (not standard) "
                             "followed by -gamma<G>, e.g. gin-gamma0.25")
    if arm.method not in PRETRAIN_ATTENTIONS:
        raise ValueError(f"arm {arm.name!r}: method must be one of {PRETRAIN_ATTENTIONS}, "
                         f"got {arm.method!r}")
    if arm.method == "standard":
        if arm.options:
            raise ValueError(f"arm {arm.name!r}: the standard-attention arm takes no graph "
                             f"options, got {arm.options!r}")
        return arm
    where = f"arm {arm.name!r}"
    arm = Arm(arm.name, arm.method, check_graph_options(arm.options, arm.method, where))
    if settings is not None:
        check_graph_options({**settings.graph, **arm.options}, arm.method, where, settings)
    return arm


def define_pretrain_arm(name: str, assignments: list[str]) -> Arm:
    """A pre-training arm from ``KEY=VALUE`` texts: ``base=`` a built-in arm (default
    ``gin``), the other keys :data:`GRAPH_OPTIONS` or their old names (see
    :func:`~pyg_transformer.experiments.arms.define_arm`)."""
    assignments = [
        _renamed(key, f"arm {name!r}") + sep + text
        for key, sep, text in (assignment.partition("=") for assignment in assignments)
    ]
    return pretrain_arm(define_arm(name, assignments, PRETRAIN_ARMS, "gin",
                                   graph_option_types()))


@dataclass
class PretrainSettings:
    """Model size and data of a from-scratch comparison.

    Every arm gets the same embedding, depth and heads; the feed-forward width of each
    arm is chosen so that all arms have (as nearly as possible) ``target_parameters``
    parameters, the standard model's count at ``intermediate_size`` by default.

    Attributes:
        data: ``"gsm"`` (GSM8K problem texts), ``"protein"`` (the paper's
            secondary-structure task, :func:`~pyg_transformer.data.load_protein_ss`) or a
            local file (``text`` column, or prompt/completion or question/answer pairs).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the
            standard (reference) model's shape.
        variants_per_template: GSM8K problems generated per template.
        max_proteins: protein data only: keep a seeded sample of this many distinct
            sequences (``None``: all).
        graph: :data:`GRAPH_OPTIONS` of :class:`~pyg_transformer.GraphLlamaConfig` for
            every GIN and PNA arm (an arm's own options override them; the standard arm
            ignores them). Values equal to the config's defaults are dropped, so that
            giving a default changes nothing.
    """

    data: str = "gsm"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 256
    variants_per_template: int = 4
    max_proteins: int | None = None
    graph: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_int_fields(self, ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                "intermediate_size", "variants_per_template"))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_heads ({self.num_heads})")
        if self.data not in PRETRAIN_DATA and not os.path.isfile(self.data):
            raise FileNotFoundError(
                f"data must be 'gsm', 'protein' or an existing file, got {self.data!r}")
        if self.max_proteins is not None:
            check_int_fields(self, ("max_proteins",), minimum=2)
            if self.data != "protein":
                raise ValueError(f"max_proteins applies to data='protein' only, got "
                                 f"data={self.data!r}")
        # PNA accepts every graph option GIN does, and pna_blend; each arm checks its own
        defaults = graph_defaults()
        self.graph = {key: value for key, value in
                      check_graph_options(self.graph, "pna", "graph", self).items()
                      if value != defaults[key]}


def load_pretrain_data(settings: PretrainSettings, seed: int, max_length: int):
    """A ``DatasetDict`` with a ``text`` column; GSM8K's test split holds unseen templates,
    the protein test split unseen sequences and PDB entries.

    Protein data keeps the sequences whose text fits ``max_length`` tokens (at most
    :data:`~pyg_transformer.data.protein.MAX_RESIDUES` residues, the paper's task).
    """
    from pyg_transformer.data import load_gsm8k, load_local_dataset, load_protein_ss
    from pyg_transformer.data.protein import MAX_RESIDUES, TEXT_TOKENS

    if settings.data == "gsm":
        return load_gsm8k(settings.variants_per_template, seed=seed)
    if settings.data == "protein":
        residues = min(MAX_RESIDUES, max_length - TEXT_TOKENS)
        if residues < 1:
            raise ValueError(f"max_length must be > {TEXT_TOKENS} for protein data (a text has "
                             f"{TEXT_TOKENS} tokens besides its residues), got {max_length}")
        if residues < MAX_RESIDUES:
            logger.info("protein data: sequences of <= %d residues, so that their texts fit "
                        "max_length=%d tokens (the paper's %d residues need %d)", residues,
                        max_length, MAX_RESIDUES, MAX_RESIDUES + TEXT_TOKENS)
        return load_protein_ss(residues, seed=seed, max_proteins=settings.max_proteins)
    return load_local_dataset(settings.data, "pretrain", seed=seed)


def _config(arm: Arm, settings: PretrainSettings, vocab_size: int, tokenizer,
            intermediate_size: int, max_length: int):
    from pyg_transformer.models import GraphLlamaConfig

    options = {} if arm.method == "standard" else {**settings.graph, **arm.options}
    return GraphLlamaConfig(
        attention_type=arm.method,
        **options,
        vocab_size=vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=max(max_length, 64),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def build_matched_config(attention: str | Arm, settings: PretrainSettings, tokenizer,
                         max_length: int):
    """The config of the arm ``attention`` (a built-in arm's name, see
    :data:`PRETRAIN_ARMS`, or an :class:`~pyg_transformer.experiments.arms.Arm`): the
    settings' graph options overridden by the arm's, its FFN width fitted to the size of
    the standard (reference) model.

    The parameter count is affine in ``intermediate_size`` (three ``D x I`` matrices per
    layer), so two probes give the width whose count is closest to the standard model's.
    """
    from pyg_transformer.models import GraphLlamaForCausalLM

    arm = pretrain_arm(attention, settings)
    vocab = len(tokenizer)

    def count(kind: Arm, width: int) -> int:
        config = _config(kind, settings, vocab, tokenizer, width, max_length)
        return GraphLlamaForCausalLM(config).num_parameters()

    target = count(PRETRAIN_ARMS["standard"], settings.intermediate_size)
    base = count(arm, 1)
    per_unit = count(arm, 2) - base
    width = round(1 + (target - base) / per_unit)
    if width < 1:
        logger.warning("%s: larger than the standard model even with intermediate_size=1 "
                       "(%d vs %d parameters)", arm.name, base, target)
    return _config(arm, settings, vocab, tokenizer, max(1, width), max_length)


def run_pretrain(attention: str | Arm, settings: PretrainSettings, train: TrainSettings,
                 datasets=None, tokenizer=None, callbacks=None) -> ArmResult:
    """Train one arm from scratch (a built-in arm's name or an
    :class:`~pyg_transformer.experiments.arms.Arm`, see :func:`build_matched_config`),
    evaluate it on the held-out split and save it.

    The model and its tokenizer (``save_pretrained``: ``config.json`` +
    ``model.safetensors`` + tokenizer files, loadable with ``AutoModelForCausalLM`` /
    ``AutoTokenizer.from_pretrained``) and ``result.json`` (the returned
    :class:`ArmResult`) replace the folder ``train.output_dir``; under torchrun only rank 0
    writes. Protein data gets the paper's tokenizer
    (:func:`~pyg_transformer.data.protein_ss_tokenizer`) and is scored by its two classes;
    other data a character tokenizer trained on the training texts. Pass
    ``datasets``/``tokenizer`` to share them across arms; ``callbacks`` go to the Trainer.
    """
    from transformers import set_seed

    from pyg_transformer.experiments.runner import train_arm

    from pyg_transformer.data import protein_ss_tokenizer, train_char_tokenizer
    from pyg_transformer.models import GraphLlamaForCausalLM

    protein = settings.data == "protein"
    if datasets is None:
        datasets = load_pretrain_data(settings, train.seed, train.max_length)
    if tokenizer is None and protein:
        tokenizer = protein_ss_tokenizer(model_max_length=train.max_length)
    elif tokenizer is None:
        tokenizer = train_char_tokenizer(datasets["train"]["text"],
                                         model_max_length=train.max_length)
    arm = pretrain_arm(attention, settings)
    set_seed(train.seed)
    config = build_matched_config(arm, settings, tokenizer, train.max_length)
    model = GraphLlamaForCausalLM(config)
    result = train_arm(arm.name, model, tokenizer, datasets, train, text_column="text",
                       scoring="protein_ss" if protein else "number", callbacks=callbacks)
    if is_main_process():
        save_run(train.output_dir, result, model, tokenizer)
    return result
