"""Offline data: GSM8K templates, local files, character tokenizers and SmolLM2."""

from pyg_transformer.data.answers import exact_match, extract_answer, normalize_number
from pyg_transformer.data.gsm8k import (
    format_completion,
    format_prompt,
    generate_gsm8k_problems,
    load_gsm8k,
    split_templates,
)
from pyg_transformer.data.local import load_local_dataset
from pyg_transformer.data.smollm2 import load_smollm2, smollm2_gguf_path
from pyg_transformer.data.tokenizer import (
    AMINO_ACIDS,
    DEFAULT_SPECIAL_TOKENS,
    amino_acid_tokenizer,
    train_char_tokenizer,
)

__all__ = [
    "AMINO_ACIDS",
    "DEFAULT_SPECIAL_TOKENS",
    "amino_acid_tokenizer",
    "exact_match",
    "extract_answer",
    "format_completion",
    "format_prompt",
    "generate_gsm8k_problems",
    "load_gsm8k",
    "load_local_dataset",
    "load_smollm2",
    "normalize_number",
    "smollm2_gguf_path",
    "split_templates",
    "train_char_tokenizer",
]
