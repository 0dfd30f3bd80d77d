"""Character-level (amino-acid-level) tokenizers for models trained from scratch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: The 20 single-letter amino-acid codes.
AMINO_ACIDS = "ARNDCEQGHILKMFPSTWYV"

#: Special tokens of the paper's from-scratch tokenizer (§4.1); the first five are the
#: ``pad``, ``eos``, ``bos``, ``unk`` and ``mask`` tokens of the wrapped tokenizer.
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|eot_id|>"
BOS_TOKEN = "<|begin_of_text|>"
UNK_TOKEN = "<|unk|>"
MASK_TOKEN = "<|mask|>"
SEQUENCE_TOKENS = ("<|sequence|>", "<|/sequence|>")
DEFAULT_SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN, MASK_TOKEN, *SEQUENCE_TOKENS)


def train_char_tokenizer(
    texts: Iterable[str],
    *,
    special_tokens: Sequence[str] = (),
    alphabet: str = "",
    model_max_length: int | None = None,
):
    r"""Train a character-level tokenizer with the ``tokenizers`` library.

    Every character of ``texts`` (and of ``alphabet``) becomes one token; special tokens
    (:data:`DEFAULT_SPECIAL_TOKENS` followed by ``special_tokens``, e.g. secondary-structure
    labels ``"<|AH|>"``) are never split. Encoding prepends ``<|begin_of_text|>``; the EOS
    token is ``<|eot_id|>`` (appended by the training collator), unseen characters map to
    ``<|unk|>``. Ids: the special tokens first (``<|pad|>`` = 0), then the characters in
    order of decreasing frequency.

    Args:
        texts: training texts (any iterable of str, e.g. a dataset column).
        special_tokens: extra tokens kept whole, added after the defaults.
        alphabet: characters always in the vocabulary, even when absent from ``texts``.
        model_max_length: maximum sequence length stored with the tokenizer.

    Returns:
        A :class:`transformers.PreTrainedTokenizerFast`: ``save_pretrained`` writes it next
        to a model and :class:`transformers.AutoTokenizer` loads it back without this library.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single str")
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a sequence of strings, not a single str")
    extra = [t for t in dict.fromkeys(special_tokens) if t not in DEFAULT_SPECIAL_TOKENS]
    for token in extra:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    if model_max_length is not None and (not isinstance(model_max_length, int)
                                         or model_max_length < 1):
        raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")

    backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=[*DEFAULT_SPECIAL_TOKENS, *extra],
                                        min_frequency=1, show_progress=False)

    def corpus():
        if alphabet:
            yield alphabet
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must hold strings, got {type(text).__name__}: {text!r}")
            yield text

    backend.train_from_iterator(corpus(), trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)])
    kwargs = {"model_max_length": model_max_length} if model_max_length is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN, mask_token=MASK_TOKEN,
        additional_special_tokens=[*SEQUENCE_TOKENS, *extra], **kwargs)


def amino_acid_tokenizer(special_tokens: Sequence[str] = (), *,
                         model_max_length: int | None = None):
    r"""The paper's protein tokenizer (§4.1): the 20 amino-acid letters as tokens plus the
    default special tokens and ``special_tokens`` (e.g. ``["<|AH|>", "<|BS|>", "<|T|>"]``).
    Any other character maps to ``<|unk|>``. The secondary-structure task's tokenizer,
    whose class tokens are not special, is :func:`~pyg_transformer.data.protein_ss_tokenizer`."""
    return train_char_tokenizer([], special_tokens=special_tokens, alphabet=AMINO_ACIDS,
                                model_max_length=model_max_length)
