"""Protein secondary structure (paper §4.1), offline from the DSSP annotations of the
``sidechainnet`` package.

``sidechainnet`` 1.0.1 ships ``resources/full_protein_dssp_annotations.json``: 159,026
PDB chains, ``"<PDB code>_<entity>_<chain>"`` (e.g. ``"200L_1_A"``) ->
``{"Sequence": str, "DSSP": str}`` with one 8-state DSSP letter per residue. The task:
given a sequence of at most 256 residues, predict its most and second most frequent
secondary-structure class.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from random import Random

from pyg_transformer.data.packages import package_file
from pyg_transformer.data.tokenizer import (
    AMINO_ACIDS,
    BOS_TOKEN,
    EOS_TOKEN,
    SEQUENCE_TOKENS,
    amino_acid_tokenizer,
)

logger = logging.getLogger(__name__)

SIDECHAINNET_PACKAGE = "sidechainnet"
SIDECHAINNET_DSSP = "resources/full_protein_dssp_annotations.json"
SIDECHAINNET_INSTALL = "pip install --no-deps \"sidechainnet==1.0.1\""

#: The class name of each 8-state DSSP letter (the paper's tokens; its §4.1 table spells
#: the pi helix ``PHIHELIX``, the project's issue 10 fixes ``PIHELIX``).
DSSP_CLASSES = {"H": "AH", "E": "BS", "T": "T", "L": "UNSTRUCTURED", "B": "BETABRIDGE",
                "G": "310HELIX", "I": "PIHELIX", "S": "BEND"}
#: The class tokens, ``"<|AH|>"`` ... in the order of :data:`DSSP_CLASSES`.
CLASS_TOKENS = tuple(f"<|{name}|>" for name in DSSP_CLASSES.values())
#: Longest sequence of the paper's task (residues).
MAX_RESIDUES = 256
#: Tokens of a ``text`` besides its residues: BOS, ``<|sequence|>``, ``<|/sequence|>``, the
#: two class tokens and EOS.
TEXT_TOKENS = 6

COLUMNS = ("chain_id", "pdb_id", "sequence", "primary", "secondary", "prompt", "completion",
           "answer", "text")
_STANDARD = frozenset(AMINO_ACIDS)
_CLASS_TOKEN = re.compile("|".join(re.escape(token) for token in CLASS_TOKENS))


def sidechainnet_dssp_path() -> Path:
    """Path of the DSSP annotation file inside the installed ``sidechainnet`` package,
    found without importing it (its ``__init__`` needs torch, ProDy, ...)."""
    return package_file(SIDECHAINNET_PACKAGE, SIDECHAINNET_DSSP, SIDECHAINNET_INSTALL,
                        "Protein secondary-structure annotations")


def dominant_ss_classes(dssp: str) -> tuple[str, str]:
    r"""The most and the second most frequent class of a DSSP string, as class names.

    Ties go to the class that occurs first along the chain (N- to C-terminus), i.e. the
    order of ``collections.Counter(dssp).most_common(2)``; a chain of a single class has
    it as both (the paper's ``<|T|><|T|>`` sample). ``"LLHHHL"`` -> ``("UNSTRUCTURED", "AH")``.

    Raises:
        ValueError: ``dssp`` is empty or holds a letter outside :data:`DSSP_CLASSES`.
    """
    if not dssp:
        raise ValueError("dssp is empty")
    unknown = set(dssp) - set(DSSP_CLASSES)
    if unknown:
        raise ValueError(f"dssp holds letters outside {sorted(DSSP_CLASSES)}: {sorted(unknown)}")
    letters = [letter for letter, _ in Counter(dssp).most_common(2)]
    return DSSP_CLASSES[letters[0]], DSSP_CLASSES[letters[-1]]


def format_protein_prompt(sequence: str) -> str:
    """``<|begin_of_text|><|sequence|>SEQ<|/sequence|>``."""
    return f"{BOS_TOKEN}{SEQUENCE_TOKENS[0]}{sequence}{SEQUENCE_TOKENS[1]}"


def format_protein_completion(primary: str, secondary: str) -> str:
    """``<|PRIMARY|><|SECONDARY|>`` (the collator appends EOS)."""
    return f"<|{primary}|><|{secondary}|>"


def protein_ss_tokenizer(*, model_max_length: int | None = None):
    r"""The paper's protein tokenizer (§4.1): the default special tokens, the 20 amino
    acids and the 8 class tokens :data:`CLASS_TOKENS`, each one token.

    The class tokens are ordinary vocabulary (added after the amino acids), not special
    tokens, so ``decode(..., skip_special_tokens=True)`` (generation) keeps them.
    """
    from tokenizers import AddedToken

    tokenizer = amino_acid_tokenizer(model_max_length=model_max_length)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in CLASS_TOKENS])
    return tokenizer


def _protein_rows(max_length: int) -> list[dict[str, str]]:
    """Chains of <= ``max_length`` standard residues, one per distinct sequence (the
    smallest chain ID), sorted by chain ID, with their two classes."""
    path = sidechainnet_dssp_path()
    with path.open(encoding="utf-8") as f:
        chains = json.load(f)
    short = {cid: c for cid, c in chains.items() if len(c["Sequence"]) <= max_length}
    standard = {cid: c for cid, c in short.items() if _STANDARD.issuperset(c["Sequence"])}
    first: dict[str, str] = {}
    for cid in sorted(standard):
        first.setdefault(standard[cid]["Sequence"], cid)
    logger.info("protein data (%s): %d chains, %d of <= %d residues, %d of standard residues "
                "only, %d distinct sequences", path.name, len(chains), len(short), max_length,
                len(standard), len(first))
    rows = []
    for sequence, cid in sorted(first.items(), key=lambda item: item[1]):
        primary, secondary = dominant_ss_classes(standard[cid]["DSSP"])
        rows.append({"chain_id": cid, "pdb_id": cid.split("_", 1)[0], "sequence": sequence,
                     "primary": primary, "secondary": secondary})
    return rows


def _split_by_entry(rows: list[dict[str, str]], test_fraction: float,
                    rng: Random) -> tuple[list[dict], list[dict]]:
    """Shuffled PDB entries go to the test split until it holds
    ``round(test_fraction * len(rows))`` rows (at least one entry stays in training)."""
    per_entry: dict[str, int] = Counter(row["pdb_id"] for row in rows)
    entries = sorted(per_entry)
    if len(entries) < 2:
        raise ValueError(f"need proteins of at least 2 PDB entries to split, got {len(entries)}")
    rng.shuffle(entries)
    target, held = max(1, round(test_fraction * len(rows))), set()
    count = 0
    for entry in entries[:-1]:
        if count >= target:
            break
        held.add(entry)
        count += per_entry[entry]
    return ([r for r in rows if r["pdb_id"] not in held], [r for r in rows if r["pdb_id"] in held])


def _columns(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {name: [] for name in COLUMNS}
    for row in rows:
        prompt = format_protein_prompt(row["sequence"])
        completion = format_protein_completion(row["primary"], row["secondary"])
        for name in ("chain_id", "pdb_id", "sequence", "primary", "secondary"):
            columns[name].append(row[name])
        columns["prompt"].append(prompt)
        columns["completion"].append(completion)
        columns["answer"].append(completion)
        columns["text"].append(prompt + completion + EOS_TOKEN)
    return columns


def load_protein_ss(max_length: int = MAX_RESIDUES, test_fraction: float = 0.1, seed: int = 0,
                    *, max_proteins: int | None = None):
    r"""The paper's secondary-structure task (§4.1) as a :class:`datasets.DatasetDict` with
    ``"train"`` and ``"test"`` splits that share no sequence and no PDB entry.

    Chains of at most ``max_length`` residues, all of them of the 20 standard amino acids,
    are kept once per distinct sequence (the chain with the smallest ID). With
    ``max_proteins``, a ``random.Random(seed)`` sample of that many is kept. The PDB
    entries (the 4-letter code of the chain ID) are shuffled with the same generator and
    held out until ``round(test_fraction * n)`` proteins are in ``"test"``. Rows are
    sorted by chain ID.

    Columns: ``chain_id`` (``"200L_1_A"``), ``pdb_id`` (``"200L"``), ``sequence``,
    ``primary`` and ``secondary`` (class names, see :func:`dominant_ss_classes`),
    ``prompt`` (``<|begin_of_text|><|sequence|>SEQ<|/sequence|>``), ``completion`` and
    ``answer`` (``<|AH|><|UNSTRUCTURED|>``; the collator appends EOS), ``text`` (prompt +
    completion + ``<|eot_id|>``, for pre-training).

    Args:
        max_length: longest sequence kept (residues).
        test_fraction: share of the proteins held out, in (0, 1).
        seed: seed of the ``max_proteins`` sample and of the split.
        max_proteins: keep this many distinct sequences, at least 2 (``None``: all).

    Raises:
        ImportError: ``sidechainnet`` is not installed (the message says how to install it).
    """
    from datasets import Dataset, DatasetDict

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if max_proteins is not None and (isinstance(max_proteins, bool)
                                     or not isinstance(max_proteins, int) or max_proteins < 2):
        raise ValueError(f"max_proteins must be an int >= 2 or None, got {max_proteins!r}")

    rows = _protein_rows(max_length)
    rng = Random(seed)
    if max_proteins is not None and max_proteins < len(rows):
        rows = sorted(rng.sample(rows, max_proteins), key=lambda row: row["chain_id"])
    train, test = _split_by_entry(rows, test_fraction, rng)
    return DatasetDict({"train": Dataset.from_dict(_columns(train)),
                        "test": Dataset.from_dict(_columns(test))})


def _classes(text: str) -> list[str]:
    """The class names of the (at most two) class tokens ``text`` starts with."""
    names, position = [], 0
    text = text.strip()
    for _ in range(2):
        match = _CLASS_TOKEN.match(text, position)
        if match is None:
            break
        names.append(match.group()[2:-2])
        position = match.end()
    return names


def protein_ss_accuracy(predictions: Sequence[str],
                        references: Sequence[str]) -> dict[str, float]:
    r"""Accuracy of generated class tokens against reference completions.

    A completion's primary class is the class token it starts with and its secondary
    class the one right after (``"<|AH|><|UNSTRUCTURED|>"``; surrounding whitespace is
    ignored); anything else in those places scores 0.

    Returns:
        ``{"primary": float, "secondary": float, "both": float}``: the fraction of
        predictions with the right primary class, the right secondary class, and both.

    Raises:
        ValueError: the lists are empty or differ in length, or a reference does not
            start with two class tokens.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("protein_ss_accuracy expects sequences of strings, not a single str")
    if len(predictions) != len(references):
        raise ValueError(f"protein_ss_accuracy got {len(predictions)} predictions but "
                         f"{len(references)} references")
    if len(references) == 0:
        raise ValueError("protein_ss_accuracy needs at least one prediction/reference pair")
    primary = secondary = both = 0
    for prediction, reference in zip(predictions, references):
        gold = _classes(reference)
        if len(gold) != 2:
            raise ValueError(f"reference does not start with two class tokens: {reference!r}")
        guess = _classes(prediction) + [None, None]
        primary += guess[0] == gold[0]
        secondary += guess[1] == gold[1]
        both += guess[:2] == gold
    n = len(references)
    return {"primary": primary / n, "secondary": secondary / n, "both": both / n}
