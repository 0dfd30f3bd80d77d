"""A tiny offline causal LM and arithmetic word problems, shared by the CLI and run tests."""

import json
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

from pyg_transformer.data import train_char_tokenizer

PROBLEMS = [
    ("Tom has {a} apples and buys {b} more. How many apples does he have?", "{a} + {b} = {c}"),
    ("A box holds {a} pens. {b} pens are added. How many pens are in the box?", "{a}+{b}={c}"),
    ("Sara reads {a} pages, then {b} pages. How many pages did she read?", "{a} + {b} is {c}"),
]

#: CLI training options small enough for a run of a few seconds on a CPU
TINY_TRAIN = ["--steps", "3", "--eval-steps", "3", "--logging-steps", "1", "--eval-size", "4",
              "--exact-match-size", "2", "--max-new-tokens", "4", "--max-length", "256"]


def write_problems(path: Path, count: int = 30) -> str:
    """``count`` question/answer rows (GSM8K-style ``#### N`` answers) as JSON lines."""
    with path.open("w") as f:
        for i in range(count):
            question, solution = PROBLEMS[i % 3]
            a, b = i + 2, 2 * i + 1
            f.write(json.dumps({"question": question.format(a=a, b=b),
                                "answer": solution.format(a=a, b=b, c=a + b)
                                + f"\n#### {a + b}"}) + "\n")
    return str(path)


def save_tiny_llama(folder: Path, data_file: str) -> str:
    """A tiny random Llama with a character tokenizer over ``data_file``, saved like any
    Hugging Face checkpoint into ``folder``."""
    with open(data_file) as f:
        texts = [line for line in f] + ["Question: Answer:"]
    tokenizer = train_char_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
