"""Shared test set-up: offline Hugging Face, deterministic torch, tiny model configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    """A JSONL file of 30 question/answer problems (``tiny_llm_helpers.write_problems``)."""
    from tiny_llm_helpers import write_problems

    return write_problems(tmp_path_factory.mktemp("data") / "problems.jsonl")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, data_file):
    """A saved tiny random Llama with a character tokenizer trained on ``data_file``."""
    from tiny_llm_helpers import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), data_file)
