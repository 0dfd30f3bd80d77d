"""Prompt-masked causal-LM batches: the loss falls on the completion and its EOS only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    r"""Token ids of a prompt, as the model sees it in training and in generation.

    The tokenizer's own special tokens (e.g. a BOS) are added unless the prompt text
    already starts with the BOS token (chat-templated prompts)."""
    bos = tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


class PromptCompletionCollator:
    r"""Tokenise, mask and pad prompt/completion pairs for :class:`transformers.Trainer`.

    For a pair the sequence is ``x = [p_1..p_m, c_1..c_n, EOS]`` (prompt ids from
    :func:`encode_prompt`, completion ids without special tokens, then
    ``tokenizer.eos_token_id`` unless the completion already ends with it) and the labels are

    .. math::
        y_t = \begin{cases} x_t & t > m \\ -100 & t \le m \text{ or padding,} \end{cases}

    so the loss is on the completion and the EOS (the model learns to stop). Prompt and
    completion are tokenised separately, exactly as generation sees them. A feature with a
    ``text`` field instead is a pre-training example (empty prompt, loss on every token;
    the tokenizer's BOS is prepended unless the text starts with it);
    a feature that already holds ``input_ids`` and ``labels`` (from :meth:`encode` /
    :func:`encode_dataset`) is only padded.

    Args:
        tokenizer: any Hugging Face tokenizer with an EOS token; padding uses its pad token,
            else its EOS token (labels never depend on the pad id).
        max_length: truncate each sequence to this many tokens (keeping its start); a
            prompt that leaves no completion token raises a ``ValueError``.
        padding_side: ``"right"`` or ``"left"`` (default: the tokenizer's).
        pad_to_multiple_of: round the padded length up to a multiple of this.

    Returns (``__call__``):
        ``{"input_ids": [B, T], "attention_mask": [B, T], "labels": [B, T]}`` long tensors.
    """

    def __init__(self, tokenizer, max_length: int | None = None, padding_side: str | None = None,
                 pad_to_multiple_of: int | None = None):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no eos_token: the collator "
                             "appends EOS so the model learns to stop")
        padding_side = padding_side or getattr(tokenizer, "padding_side", "right")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        pad_id = tokenizer.pad_token_id
        self.pad_token_id = tokenizer.eos_token_id if pad_id is None else pad_id
        bos_id = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"] if bos_id is not None else []
        self._bos_prefix = (bos_id,) if probe and probe[0] == bos_id else ()

    def encode(self, prompt: str, completion: str) -> dict[str, list[int]]:
        """``{"input_ids", "labels"}`` of one pair (unpadded lists)."""
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise TypeError(f"prompt and completion must be str, got {type(prompt).__name__} "
                            f"and {type(completion).__name__}")
        if prompt:
            prompt_ids = encode_prompt(self.tokenizer, prompt)
        else:  # pre-training text starts with the tokenizer's BOS, if any, once
            bos = self.tokenizer.bos_token
            prompt_ids = [] if bos and completion.startswith(bos) else list(self._bos_prefix)
        completion_ids = list(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
        if not completion_ids or completion_ids[-1] != self.tokenizer.eos_token_id:
            completion_ids.append(self.tokenizer.eos_token_id)
        input_ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
        if self.max_length is not None:
            if len(prompt_ids) >= self.max_length:
                raise ValueError(
                    f"the prompt has {len(prompt_ids)} tokens, max_length={self.max_length} "
                    f"leaves no completion token to learn: raise max_length or shorten "
                    f"the prompt {prompt[:60]!r}...")
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        return {"input_ids": input_ids, "labels": labels}

    def _encode_feature(self, feature: Mapping[str, Any]) -> dict[str, list[int]]:
        if "input_ids" in feature and "labels" in feature:
            input_ids, labels = list(feature["input_ids"]), list(feature["labels"])
            if len(input_ids) != len(labels):
                raise ValueError(f"input_ids ({len(input_ids)}) and labels ({len(labels)}) "
                                 "differ in length")
            return {"input_ids": input_ids, "labels": labels}
        if "prompt" in feature and "completion" in feature:
            return self.encode(feature["prompt"], feature["completion"])
        if "text" in feature:
            return self.encode("", feature["text"])
        raise ValueError("each feature needs 'prompt' and 'completion', 'text', or 'input_ids' "
                         f"and 'labels'; got keys {sorted(feature)}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("cannot collate an empty batch")
        encoded = [self._encode_feature(f) for f in features]
        length = max(len(e["input_ids"]) for e in encoded)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(encoded), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e["input_ids"])
            cols = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[row, cols] = torch.tensor(e["input_ids"], dtype=torch.long)
            labels[row, cols] = torch.tensor(e["labels"], dtype=torch.long)
            attention_mask[row, cols] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_dataset(dataset, collator: PromptCompletionCollator, *, text_column: str | None = None):
    r"""Tokenise a :class:`datasets.Dataset` once with ``collator.encode``.

    Uses the ``prompt``/``completion`` columns (loss on the completion), or ``text_column``
    (e.g. ``"text"``; loss on every token) when given. The result has only ``input_ids`` and
    ``labels``, so :class:`transformers.Trainer` keeps them with its default
    ``remove_unused_columns=True`` and ``collator`` just pads.
    """
    if text_column is not None:
        if text_column not in dataset.column_names:
            raise ValueError(f"text_column {text_column!r} not in {dataset.column_names}")

        def fn(row):
            return collator.encode("", row[text_column])
    else:
        missing = {"prompt", "completion"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"dataset needs 'prompt' and 'completion' columns (or pass "
                             f"text_column); it has {dataset.column_names}")

        def fn(row):
            return collator.encode(row["prompt"], row["completion"])
    return dataset.map(fn, remove_columns=dataset.column_names)
