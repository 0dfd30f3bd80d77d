"""Pre-training arms: GIN-, PNA- and standard-attention Llamas of matched size, from scratch."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pyg_transformer.experiments.runner import (
    ArmResult,
    TrainSettings,
    check_int_fields,
    is_main_process,
    train_arm,
)
from pyg_transformer.experiments.runs import save_run

logger = logging.getLogger(__name__)

PRETRAIN_ATTENTIONS = ("gin", "pna", "standard")
#: the built-in data sets of :class:`PretrainSettings` (besides local files)
PRETRAIN_DATA = ("gsm", "protein")


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
    """

    data: str = "gsm"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 256
    variants_per_template: int = 4
    max_proteins: int | None = None

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


def _config(attention: str, settings: PretrainSettings, vocab_size: int, tokenizer,
            intermediate_size: int, max_length: int):
    from pyg_transformer.models import GraphLlamaConfig

    return GraphLlamaConfig(
        attention_type=attention,
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


def build_matched_config(attention: str, settings: PretrainSettings, tokenizer,
                         max_length: int):
    """The ``attention`` arm's config, its FFN width fitted to the reference's size.

    The parameter count is affine in ``intermediate_size`` (three ``D x I`` matrices per
    layer), so two probes give the width whose count is closest to the standard model's.
    """
    from pyg_transformer.models import GraphLlamaForCausalLM

    if attention not in PRETRAIN_ATTENTIONS:
        raise ValueError(f"attention must be one of {PRETRAIN_ATTENTIONS}, got {attention!r}")
    vocab = len(tokenizer)

    def count(kind: str, width: int) -> int:
        config = _config(kind, settings, vocab, tokenizer, width, max_length)
        return GraphLlamaForCausalLM(config).num_parameters()

    target = count("standard", settings.intermediate_size)
    base = count(attention, 1)
    per_unit = count(attention, 2) - base
    width = max(1, round(1 + (target - base) / per_unit))
    return _config(attention, settings, vocab, tokenizer, width, max_length)


def run_pretrain(attention: str, settings: PretrainSettings, train: TrainSettings,
                 datasets=None, tokenizer=None, callbacks=None) -> ArmResult:
    """Train one arm from scratch, evaluate it on the held-out split and save it.

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
    set_seed(train.seed)
    config = build_matched_config(attention, settings, tokenizer, train.max_length)
    model = GraphLlamaForCausalLM(config)
    result = train_arm(attention, model, tokenizer, datasets, train, text_column="text",
                       scoring="protein_ss" if protein else "number", callbacks=callbacks)
    if is_main_process():
        save_run(train.output_dir, result, model, tokenizer)
    return result
