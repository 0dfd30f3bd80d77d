"""Offline data: GSM8K templates, protein secondary structure, local files, character
tokenizers and SmolLM2."""

from pyg_transformer.data.answers import exact_match, extract_answer, normalize_number
from pyg_transformer.data.gsm8k import (
    format_completion,
    format_prompt,
    generate_gsm8k_problems,
    load_gsm8k,
    split_templates,
)
from pyg_transformer.data.local import load_local_dataset
from pyg_transformer.data.protein import (
    DSSP_CLASSES,
    dominant_ss_classes,
    load_protein_ss,
    protein_ss_accuracy,
    protein_ss_tokenizer,
)
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
    "DSSP_CLASSES",
    "amino_acid_tokenizer",
    "dominant_ss_classes",
    "exact_match",
    "extract_answer",
    "format_completion",
    "format_prompt",
    "generate_gsm8k_problems",
    "load_gsm8k",
    "load_local_dataset",
    "load_protein_ss",
    "load_smollm2",
    "normalize_number",
    "protein_ss_accuracy",
    "protein_ss_tokenizer",
    "smollm2_gguf_path",
    "split_templates",
    "train_char_tokenizer",
]
