"""Protein secondary structure from sidechainnet's DSSP annotations (issue 10, paper §4.1):
loader, tokenizer, scorer and a tiny ``compare pretrain --data protein``."""

import json
import math
import sys
from collections import Counter

import pytest

from pyg_transformer.cli import main
from pyg_transformer.data import (
    AMINO_ACIDS,
    DSSP_CLASSES,
    dominant_ss_classes,
    load_protein_ss,
    protein_ss_accuracy,
    protein_ss_tokenizer,
)
from pyg_transformer.data.protein import CLASS_TOKENS, TEXT_TOKENS, sidechainnet_dssp_path
from pyg_transformer.experiments.compare import markdown_table
from pyg_transformer.experiments.pretrain import PretrainSettings, load_pretrain_data
from pyg_transformer.experiments.runner import ArmResult, TrainSettings, train_arm
from pyg_transformer.training import PromptCompletionCollator

PAPER_NAMES = {"H": "AH", "E": "BS", "T": "T", "L": "UNSTRUCTURED", "B": "BETABRIDGE",
               "G": "310HELIX", "I": "PIHELIX", "S": "BEND"}


@pytest.fixture(scope="module")
def chains():
    with sidechainnet_dssp_path().open() as f:
        return json.load(f)


@pytest.fixture(scope="module")
def protein():
    return load_protein_ss()


@pytest.fixture(scope="module")
def rows(protein):
    return {row["chain_id"]: row for split in protein.values() for row in split}


def _by_hand(dssp):
    """Most and second most frequent letter, ties to the letter seen first."""
    counts = Counter(dssp)
    ranked = sorted(counts, key=lambda letter: (-counts[letter], dssp.index(letter)))
    return PAPER_NAMES[ranked[0]], PAPER_NAMES[ranked[1]]


def test_file_is_read_without_importing_sidechainnet(chains):
    assert len(chains) == 159_026
    assert "sidechainnet" not in sys.modules  # its __init__ needs torch, ProDy, ...
    assert set(chains["200L_1_A"]) == {"Sequence", "DSSP"}


def test_filters_dedup_and_split_sizes(protein, rows, chains):
    train, test = protein["train"], protein["test"]
    assert len(rows) == len(train) + len(test) == 48_552  # distinct sequences <= 256
    # whole PDB entries are held out until >= round(0.1 * 48_552) = 4_855 proteins
    assert (len(train), len(test)) == (43_696, 4_856)
    assert set(train["sequence"]).isdisjoint(test["sequence"])
    assert set(train["pdb_id"]).isdisjoint(test["pdb_id"])
    for row in rows.values():
        assert 1 <= len(row["sequence"]) <= 256 and set(row["sequence"]) <= set(AMINO_ACIDS)
        assert row["pdb_id"] == row["chain_id"][:4] and chains[row["chain_id"]]["Sequence"] \
            == row["sequence"]
    # a duplicate sequence is kept once, under its smallest chain ID
    assert chains["1MTJ_1_A"]["Sequence"] == chains["101M_1_A"]["Sequence"]
    assert "101M_1_A" in rows and "1MTJ_1_A" not in rows
    assert "X" in chains["155C_1_A"]["Sequence"] and "155C_1_A" not in rows
    assert len(chains["10MH_3_A"]["Sequence"]) > 256 and "10MH_3_A" not in rows


@pytest.mark.parametrize("chain_id", ["101M_1_A", "1A7F_2_B", "1ARF_1_A"])
def test_labels_of_known_chains(rows, chains, chain_id):
    # 1A7F_2_B: L and H tie (10 each), L comes first; 1ARF_1_A: E and T tie for second
    dssp = chains[chain_id]["DSSP"]
    row = rows[chain_id]
    assert (row["primary"], row["secondary"]) == _by_hand(dssp)
    assert dominant_ss_classes(dssp) == _by_hand(dssp)
    expected = {"101M_1_A": ("AH", "UNSTRUCTURED"), "1A7F_2_B": ("UNSTRUCTURED", "AH"),
                "1ARF_1_A": ("AH", "BS")}
    assert (row["primary"], row["secondary"]) == expected[chain_id]


def test_text_prompt_and_completion_format(rows):
    row = rows["1A7F_2_B"]
    prompt = "<|begin_of_text|><|sequence|>FVNQHLCGSHLVEALELVCGERGGFYTPK<|/sequence|>"
    assert row["prompt"] == prompt
    assert row["completion"] == row["answer"] == "<|UNSTRUCTURED|><|AH|>"
    assert row["text"] == prompt + "<|UNSTRUCTURED|><|AH|><|eot_id|>"


def test_class_rule_edge_cases_and_mapping():
    assert DSSP_CLASSES == PAPER_NAMES
    assert dominant_ss_classes("TTTT") == ("T", "T")  # one class: both (paper's <|T|><|T|>)
    assert dominant_ss_classes("SGGSI") == ("BEND", "310HELIX")
    with pytest.raises(ValueError, match="outside"):
        dominant_ss_classes("HHX")
    with pytest.raises(ValueError, match="empty"):
        dominant_ss_classes("")


def test_sample_is_deterministic_and_split_by_entry():
    small = load_protein_ss(max_proteins=60, seed=1)
    again = load_protein_ss(max_proteins=60, seed=1)
    assert small["train"].to_dict() == again["train"].to_dict()
    assert small["test"].to_dict() == again["test"].to_dict()
    assert len(small["train"]) + len(small["test"]) == 60 and len(small["test"]) == 6
    assert set(small["train"]["pdb_id"]).isdisjoint(small["test"]["pdb_id"])
    other = load_protein_ss(max_length=50, max_proteins=60, seed=2, test_fraction=0.5)
    assert set(other["train"]["chain_id"]) != set(small["train"]["chain_id"])
    assert max(len(s) for split in other.values() for s in split["sequence"]) <= 50
    assert len(other["test"]) == 30


@pytest.mark.parametrize("kwargs, error", [
    ({"max_length": 0}, "max_length"), ({"test_fraction": 1.0}, "test_fraction"),
    ({"max_proteins": 1}, "max_proteins"), ({"seed": "0"}, "seed")])
def test_bad_arguments_are_named(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        load_protein_ss(**kwargs)


def test_tokenizer_round_trip(protein):
    tok = protein_ss_tokenizer()
    assert len(tok) == 7 + 20 + 8
    for token in [*AMINO_ACIDS, *CLASS_TOKENS, "<|sequence|>", "<|/sequence|>"]:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [token]
    for text, sequence in zip(protein["test"]["text"][:50], protein["test"]["sequence"][:50]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert len(ids) == len(sequence) + TEXT_TOKENS and tok.unk_token_id not in ids
    # class tokens are text, not special tokens: generation's decode keeps them
    ids = tok("<|AH|><|BS|><|eot_id|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<|AH|><|BS|>"


def test_collator_adds_one_bos_and_one_eos(protein):
    tok = protein_ss_tokenizer()
    collator = PromptCompletionCollator(tok)
    row = protein["test"][0]
    for encoded in (collator.encode("", row["text"]),
                    collator.encode(row["prompt"], row["completion"])):
        ids = encoded["input_ids"]
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
        assert tok.decode(ids) == row["text"]


def test_scorer():
    references = ["<|AH|><|UNSTRUCTURED|>", "<|BS|><|UNSTRUCTURED|>", "<|T|><|T|>",
                  "<|BS|><|AH|>"]
    predictions = ["<|AH|><|UNSTRUCTURED|>", "<|BS|><|AH|>", " <|AH|><|T|>", "<|BS|>"]
    assert protein_ss_accuracy(predictions, references) == {
        "primary": 0.75, "secondary": 0.5, "both": 0.25}
    assert protein_ss_accuracy(["PL<|AH|><|BS|>", ""], ["<|AH|><|BS|>"] * 2) == {
        "primary": 0.0, "secondary": 0.0, "both": 0.0}
    with pytest.raises(ValueError, match="2 predictions but 1"):
        protein_ss_accuracy(["a", "b"], ["<|AH|><|BS|>"])
    with pytest.raises(ValueError, match="two class tokens"):
        protein_ss_accuracy(["<|AH|>"], ["<|AH|>"])
    with pytest.raises(ValueError, match="at least one"):
        protein_ss_accuracy([], [])
    with pytest.raises(TypeError):
        protein_ss_accuracy("<|AH|><|BS|>", "<|AH|><|BS|>")


def test_pretrain_settings_scoring_and_table_for_protein_data():
    with pytest.raises(ValueError, match="max_proteins applies to data='protein'"):
        PretrainSettings(data="gsm", max_proteins=10)
    with pytest.raises(ValueError, match="max_proteins must be an int >= 2"):
        PretrainSettings(data="protein", max_proteins=1)
    with pytest.raises(ValueError, match="max_length must be > 6"):
        load_pretrain_data(PretrainSettings(data="protein"), 0, max_length=6)
    with pytest.raises(ValueError, match="scoring must be one of"):
        train_arm("standard", None, None, {}, TrainSettings(), scoring="protein")
    # a result.json written before the protein fields existed still loads
    old = {"arm": "gin", "seed": 0, "trainable_parameters": 1, "total_parameters": 1,
           "best_eval_loss": 1.0, "best_eval_perplexity": math.e, "generalization_gap": 0.0,
           "exact_match": 0.5, "wall_time_s": 1.0}
    assert ArmResult.from_dict(old).primary_accuracy is None
    gsm_table = markdown_table({"gin": {"num_seeds": 1,
                                        "exact_match": {"mean": 0.5, "std": 0.0}}}, 1)
    assert "class acc." not in gsm_table and "| 0.500 |" in gsm_table


def test_compare_pretrain_protein_end_to_end(tmp_path, capsys):
    out = tmp_path / "protein"
    code = main(["compare", "pretrain", "--data", "protein", "--max-proteins", "40",
                 "--hidden-size", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                 "--intermediate-size", "64", "--steps", "2", "--eval-steps", "2",
                 "--logging-steps", "1", "--eval-size", "4", "--exact-match-size", "2",
                 "--max-length", "48", "--output-dir", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["data"] == "protein"
    assert results["settings"]["max_proteins"] == 40
    for arm in ("gin", "pna", "standard"):
        (run,) = results["runs"][arm]
        for key in ("exact_match", "primary_accuracy", "secondary_accuracy",
                    "best_eval_perplexity"):
            assert math.isfinite(run[key]) and run[key] >= 0, (arm, key)
        assert 0 <= run["exact_match"] <= min(run["primary_accuracy"],
                                               run["secondary_accuracy"]) <= 1
        assert len(run["predictions"]) == 2
        assert "primary_accuracy" in results["summary"][arm]
    saved = (out / "runs" / "gin-seed0" / "tokenizer.json").read_text()
    assert all(token in saved for token in CLASS_TOKENS)
    assert "primary class acc." in (out / "results.md").read_text()
    assert "primary class acc." in capsys.readouterr().out
