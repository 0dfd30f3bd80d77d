"""Every variant the paper compares, on the CLI (issue 10): the Sparse-GIN and GIN/PNA flags
reach the adapters and models actually built, named arms (built-in, ``-gamma<G>`` and
``--arm``) run end to end, and bad values are one-line errors with exit code 2."""

import json
import re

import pytest
import torch
from tiny_llm_helpers import TINY_TRAIN

from pyg_transformer.adapters import SparseGinConfig
from pyg_transformer.adapters.sparse_gin.layer import SparseGinLayer
from pyg_transformer.cli import main
from pyg_transformer.cli.main import GRAPH_FLAGS, SPARSE_GIN_FLAGS, build_parser, compare_arms
from pyg_transformer.cli.main import _finetune_settings, _pretrain_settings
from pyg_transformer.data import train_char_tokenizer
from pyg_transformer.experiments import (
    FINETUNE_ARMS,
    PRETRAIN_ARMS,
    Arm,
    FinetuneSettings,
    PretrainSettings,
    TrainSettings,
    build_matched_config,
    define_finetune_arm,
    define_pretrain_arm,
    load_base_model,
    sparse_gin_config_for,
)
from pyg_transformer.experiments.finetune import lora_config_for, wrap_model
from pyg_transformer.experiments.runs import ARM_DEFINITIONS, experiment_config, prepare_output_dir
from pyg_transformer.models import GraphLlamaForCausalLM

SHAPE = ["--hidden-size", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
         "--intermediate-size", "64"]
QUICK = [*TINY_TRAIN, "--exact-match-size", "0"]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir)


@pytest.fixture(scope="module")
def char_tokenizer():
    return train_char_tokenizer(["Tom has 3 apples. #### 3", "abcdefghij 0123456789"])


def _settings(argv: list[str]):
    args = build_parser().parse_args(argv)
    return _finetune_settings(args) if "finetune" in argv[:2] else _pretrain_settings(args)


def _adapter_layers(model) -> list[SparseGinLayer]:
    return [m for m in model.modules() if isinstance(m, SparseGinLayer)]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pyg-transformer: error: ")
    assert sum("error" in line for line in lines) == 1
    return lines[-1]


# ------------------------------------------------------------------- flags reach the models
def test_sparse_gin_flags_reach_the_adapter(base, tiny_model_dir, data_file):
    settings = _settings([
        "finetune", "--method", "sparse-gin", "--model", tiny_model_dir, "--data", data_file,
        "--hidden-dim", "12", "--alpha", "5", "--tau", "0.2", "--epsilon", "0.3",
        "--top-k", "4", "--head-reduction", "mean", "--gnn-type", "pna",
        "--num-gnn-layers", "2", "--target-layers", "1", "--scale-init", "constant",
        "--no-trainable-scale", "--no-cross-token-edges"])
    expected = dict(hidden_dim=12, alpha=5.0, tau=0.2, epsilon=0.3, top_k=4,
                    head_reduction="mean", gnn_type="pna", num_gnn_layers=2,
                    target_layers=[1], scale_init="constant", trainable_scale=False,
                    cross_token_edges=False)
    assert settings.sparse_gin == expected
    model = wrap_model("sparse-gin", __import__("copy").deepcopy(base[0]), settings)
    config = model.peft_config["default"]
    assert {key: getattr(config, key) for key in expected} == expected
    (layer,) = _adapter_layers(model)  # only decoder layer 1 is adapted
    assert layer.layer_idx == 1
    gnn = layer.sparse_gin_gnn["default"]
    assert gnn.lin_in.out_features == 12 and gnn.gnn_type == "pna" and len(gnn.convs) == 2
    (scale,) = layer.sparse_gin_lambda.values()
    assert not scale.requires_grad and torch.allclose(scale, torch.tensor(0.5))


def test_hidden_dim_matches_lora_unless_given_and_the_built_in_arms(base, tiny_model_dir,
                                                                    data_file):
    model = base[0]
    settings = FinetuneSettings(model=tiny_model_dir, data=data_file, lora_rank=2)
    matched = SparseGinConfig.match_lora(model, lora_config_for(model, settings)).hidden_dim
    built = {name: sparse_gin_config_for(model, name, settings)
             for name, arm in FINETUNE_ARMS.items() if arm.method == "sparse-gin"}
    assert built["sparse-gin"].hidden_dim == matched and built["sparse-gin"].trainable_scale
    assert built["sparse-gin-fixed-lambda"].trainable_scale is False
    fixed = SparseGinConfig.match_lora(model, lora_config_for(model, settings),
                                       trainable_scale=False).hidden_dim
    assert built["sparse-gin-small"].hidden_dim == round(matched / 2)
    assert built["sparse-gin-fixed-lambda-small"].hidden_dim == round(fixed / 2)
    assert built["sparse-gin-fixed-lambda-small"].trainable_scale is False
    assert built["sparse-gin-no-messages"].cross_token_edges is False
    assert built["sparse-gin-no-messages"].hidden_dim == matched

    given = _settings(["finetune", "--method", "sparse-gin-small", "--model", tiny_model_dir,
                       "--data", data_file, "--hidden-dim", "40"])
    assert sparse_gin_config_for(model, "sparse-gin", given).hidden_dim == 40
    assert sparse_gin_config_for(model, "sparse-gin-small", given).hidden_dim == 20
    late = define_finetune_arm("late", ["base=sparse-gin-fixed-lambda", "target_layers=1",
                                        "hidden_dim_scale=0.25", "alpha=3"])
    assert late == Arm("late", "sparse-gin", {"trainable_scale": False, "target_layers": [1],
                                              "hidden_dim_scale": 0.25, "alpha": 3.0})
    config = sparse_gin_config_for(model, late, given)
    assert (config.hidden_dim, config.alpha, config.target_layers) == (10, 3.0, [1])


def test_giving_a_default_is_the_same_configuration(tiny_model_dir, data_file):
    common = ["--model", tiny_model_dir, "--data", data_file]
    plain = _settings(["finetune", "--method", "lora", *common])
    explicit = _settings(["finetune", "--method", "lora", *common, "--alpha", "10",
                          "--trainable-scale", "--cross-token-edges"])
    assert plain == explicit and plain.sparse_gin == {}
    assert _settings(["pretrain", "--attention", "gin", "--gin-mlp-multiplier", "0.5",
                      "--sharpening", "--no-o-proj"]).graph == {}
    assert _settings(["finetune", "--method", "lora", *common, "--tau", "0.3"]) != plain


def test_graph_flags_reach_the_model_and_the_reference_stays_matched(char_tokenizer):
    settings = _settings(["pretrain", "--attention", "gin", *SHAPE,
                          "--adjacency-activation", "sigmoid", "--gin-mlp-multiplier", "0.25",
                          "--no-sharpening", "--o-proj", "--adjacency-beta", "2",
                          "--adjacency-tau", "0.1"])
    expected = dict(adjacency_activation="sigmoid", gin_mlp_multiplier=0.25,
                    sharpening=False, use_o_proj=True, adjacency_beta=2.0, adjacency_tau=0.1)
    assert settings.graph == expected
    sizes = {}
    for arm in ("gin", "pna", "standard"):
        config = build_matched_config(arm, settings, char_tokenizer, 64)
        model = GraphLlamaForCausalLM(config)
        sizes[arm] = model.num_parameters()
        attention = model.model.layers[0].self_attn
        if arm == "standard":
            assert config.attention_type == "standard"
            continue
        assert {key: getattr(config, key) for key in expected} == expected
        assert attention.o_proj is not None and attention.log_alpha is None
        assert attention.mlp.lin1.weight.shape[-1] == 2  # int(0.25 * head_dim 8)
    assert max(sizes.values()) - min(sizes.values()) <= 0.02 * max(sizes.values())

    top_k = _settings(["pretrain", "--attention", "gin", *SHAPE,
                       "--adjacency-activation", "top_k", "--adjacency-top-k", "0.5"])
    config = build_matched_config("gin", top_k, char_tokenizer, 64)
    assert (config.adjacency_activation, config.adjacency_top_k) == ("top_k", 0.5)
    for flag in ("--adjacency-top-k", "--top-k"):  # --top-k: the old name
        assert _settings(["pretrain", "--attention", "gin", "--adjacency-activation", "top_k",
                          flag, "3"]).graph == {"adjacency_activation": "top_k",
                                                "adjacency_top_k": 3}


def test_old_graph_option_name_in_arms_and_settings():
    with pytest.warns(FutureWarning, match="'top_k' is deprecated, use 'adjacency_top_k'"):
        arm = define_pretrain_arm("k", ["adjacency_activation=top_k", "top_k=0.5"])
    assert arm.options["adjacency_top_k"] == 0.5 and "top_k" not in arm.options
    with pytest.warns(FutureWarning, match="graph: graph option 'top_k' is deprecated"):
        settings = PretrainSettings(graph={"adjacency_activation": "top_k", "top_k": 4})
    assert settings.graph == {"adjacency_activation": "top_k", "adjacency_top_k": 4}


def test_built_in_and_gamma_pretrain_arms(char_tokenizer):
    settings = PretrainSettings(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=64, graph={"use_o_proj": True})
    expected = {"gin": {}, "gin-no-sharpening": {"sharpening": False},
                "gin-o-proj": {"use_o_proj": True},
                "gin-sharp-softplus": {"adjacency_activation": "sharp_softplus"},
                "pna": {}, "pna-sharp-softplus": {"adjacency_activation": "sharp_softplus"},
                "pna-blend": {"pna_blend": True},
                "gin-gamma2": {"gin_mlp_multiplier": 2.0},
                "gin-no-sharpening-gamma0.25": {"sharpening": False, "gin_mlp_multiplier": 0.25},
                "pna-gamma1": {"gin_mlp_multiplier": 1.0}}
    assert set(PRETRAIN_ARMS) | {"gin-gamma2", "gin-no-sharpening-gamma0.25",
                                 "pna-gamma1"} == set(expected) | {"standard"}
    for name, options in expected.items():
        config = build_matched_config(name, settings, char_tokenizer, 64)
        assert config.use_o_proj is True  # the settings' option, kept by every graph arm
        for key, value in options.items():
            assert getattr(config, key) == value, (name, key)
        assert config.attention_type == ("pna" if name.startswith("pna") else "gin")
    own = define_pretrain_arm("pna-sum", ["base=pna", "pna_aggregators=sum,max",
                                          "use_o_proj=false"])
    config = build_matched_config(own, settings, char_tokenizer, 64)
    assert (config.attention_type, config.pna_aggregators, config.use_o_proj) == (
        "pna", ["sum", "max"], False)


def test_compare_runs_the_arms_then_the_defined_arms():
    parse = build_parser().parse_args
    assert compare_arms(parse(["compare", "finetune"])) == ["sparse-gin", "lora"]
    assert compare_arms(parse(["compare", "pretrain"])) == ["gin", "pna", "standard"]
    arms = compare_arms(parse(["compare", "finetune", "--arms", "lora", "--arm", "a",
                               "alpha=3", "--arm", "b", "base=sparse-gin-small"]))
    assert arms == ["lora", Arm("a", "sparse-gin", {"alpha": 3.0}),
                    Arm("b", "sparse-gin", {"hidden_dim_scale": 0.5})]
    only = compare_arms(parse(["compare", "pretrain", "--arms", "--arm", "p", "base=pna",
                               "gin_mlp_multiplier=1"]))
    assert only == [Arm("p", "pna", {"gin_mlp_multiplier": 1.0})]


# ------------------------------------------------------------------------ end to end
def test_named_arm_compare_finetune_end_to_end_and_refusals(tmp_path, tiny_model_dir,
                                                             data_file, capsys):
    out = tmp_path / "fig12"
    args = ["compare", "finetune", "--model", tiny_model_dir, "--data", data_file,
            "--lora-rank", "2", "--alpha", "5", *QUICK, "--output-dir", str(out),
            "--arms", "sparse-gin-fixed-lambda",
            "--arm", "late", "target_layers=1", "hidden_dim_scale=0.5"]
    assert main(args) == 0
    arms = ["sparse-gin-fixed-lambda", "late"]
    results = json.loads((out / "results.json").read_text())
    assert results["arms"] == arms and results["complete"]
    assert "| late |" in (out / "results.md").read_text()
    assert results["settings"]["sparse_gin"] == {"alpha": 5.0}
    assert results["arm_definitions"]["late"] == {
        "method": "sparse-gin", "options": {"target_layers": [1], "hidden_dim_scale": 0.5}}
    saved = {arm: json.loads((out / "runs" / f"{arm}-seed0" / "adapter_config.json")
                             .read_text()) for arm in ("sparse-gin-fixed-lambda", "late")}
    assert saved["sparse-gin-fixed-lambda"]["trainable_scale"] is False
    assert saved["late"]["target_layers"] == [1] and saved["late"]["trainable_scale"]
    assert saved["late"]["alpha"] == saved["sparse-gin-fixed-lambda"]["alpha"] == 5.0
    late = results["runs"]["late"][0]["trainable_parameters"]
    assert late < results["runs"]["sparse-gin-fixed-lambda"][0]["trainable_parameters"] / 2
    capsys.readouterr()

    for changed, difference in (
            (["--arm", "late", "target_layers=0", "hidden_dim_scale=0.5"],
             "arm_definitions.late.options.target_layers: [1] -> [0]"),
            (["--alpha", "6"], "settings.sparse_gin.alpha: 5.0 -> 6.0")):
        argv = args[:args.index("--arm")] + changed if changed[0] == "--arm" else args + changed
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        line = _error_line(capsys)
        assert "holds runs of another configuration" in line and difference in line


def test_arm_definitions_must_match_for_arms_with_finished_runs_only(tmp_path):
    out = tmp_path / "out"
    train, settings = TrainSettings(), PretrainSettings()

    def prepare(*arms):
        return prepare_output_dir(out, experiment_config("pretrain", train, settings,
                                                         list(arms)))

    def finish(arm):
        (out / "runs" / f"{arm}-seed0").mkdir(parents=True)
        (out / "runs" / f"{arm}-seed0" / "result.json").write_text("{}")

    wide, narrow = Arm("x", "gin", {"gin_mlp_multiplier": 2.0}), Arm("x", "gin")
    prepare(wide, Arm("y", "pna"))
    finish("y")
    prepare(narrow, Arm("y", "pna"))  # x has no finished run: its definition may change
    finish("x")
    with pytest.raises(ValueError, match=r"\(arm_definitions\.x\.options\.gin_mlp_multiplier: "
                                         r"'<unset>' -> 2\.0\); rerun with --overwrite"):
        prepare(wide)
    prepare(Arm("z", "gin", {"sharpening": False}))  # a new arm is added to the others
    saved = json.loads((out / "experiment.json").read_text())[ARM_DEFINITIONS]
    assert saved == {"x": narrow.to_dict(), "y": Arm("y", "pna").to_dict(),
                     "z": {"method": "gin", "options": {"sharpening": False}}}


def test_named_arm_compare_pretrain_end_to_end(tmp_path, data_file):
    out = tmp_path / "fig8"
    assert main(["compare", "pretrain", "--data", data_file, *SHAPE, *QUICK,
                 "--output-dir", str(out), "--arms", "gin-gamma0.25",
                 "--arm", "sig", "base=gin-o-proj", "adjacency_activation=sigmoid"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arms"] == ["gin-gamma0.25", "sig"]
    configs = {arm: json.loads((out / "runs" / f"{arm}-seed0" / "config.json").read_text())
               for arm in results["arms"]}
    assert configs["gin-gamma0.25"]["gin_mlp_multiplier"] == 0.25
    assert configs["sig"]["use_o_proj"] and configs["sig"]["adjacency_activation"] == "sigmoid"
    sizes = [results["runs"][arm][0]["total_parameters"] for arm in results["arms"]]
    assert max(sizes) - min(sizes) <= 0.02 * max(sizes)  # both matched to the reference


# ------------------------------------------------------------------------ bad values
BAD_VALUES = {
    "negative alpha": (["finetune", "--method", "sparse-gin", "--alpha", "-1"],
                       r"alpha must be a positive finite number, got -1\.0"),
    "epsilon of 1": (["finetune", "--method", "sparse-gin", "--epsilon", "1"],
                     r"epsilon must be a number in \[0, 1\), got 1\.0"),
    "hidden dim 0": (["compare", "finetune", "--hidden-dim", "0"],
                     r"hidden_dim must be an int >= 1, got 0"),
    "negative target layer": (["finetune", "--method", "lora", "--target-layers", "-1"],
                              r"target_layers must be None or a non-empty list"),
    "unknown arm option": (["compare", "finetune", "--arm", "x", "alpah=3"],
                           r"arm 'x': unknown option 'alpah' \(options: base, hidden_dim,"),
    "arm value of the wrong type": (["compare", "finetune", "--arm", "x", "top_k=many"],
                                    r"arm 'x': top_k: 'many' is not a value of type int"),
    "arm without =": (["compare", "finetune", "--arm", "x", "alpha"],
                      r"arm 'x': expected KEY=VALUE, got 'alpha'"),
    "arm named like a built-in": (["compare", "finetune", "--arm", "lora", "alpha=3"],
                                  r"arm 'lora' is a built-in arm"),
    "options on a LoRA arm": (["compare", "finetune", "--arm", "x", "base=lora", "alpha=3"],
                              r"arm 'x': a LoRA arm takes no options"),
    "bad arm name": (["compare", "finetune", "--arm", "a/b"], r"arm name must be letters"),
    "bad hidden_dim_scale": (["compare", "finetune", "--arm", "x", "hidden_dim_scale=0"],
                             r"hidden_dim_scale must be a positive finite number, got 0\.0"),
    "no arms": (["compare", "finetune", "--arms"], r"arms must be a non-empty list of arms"),
    "unknown pretrain arm": (["pretrain", "--attention", "gin-fancy"],
                             r"unknown pre-training arm 'gin-fancy'; built-in arms: gin,"),
    "gamma on the standard arm": (["compare", "pretrain", "--arms", "standard-gamma2"],
                                  r"arm 'standard-gamma2': the standard-attention arm takes "
                                  r"no graph options"),
    "negative gamma": (["pretrain", "--attention", "gin", "--gin-mlp-multiplier", "-1"],
                       r"gin_mlp_multiplier must be a positive number, got -1\.0"),
    "top_k activation without k": (["pretrain", "--attention", "gin",
                                    "--adjacency-activation", "top_k"],
                                   r"adjacency_top_k must be an int >= 1 or a float in \(0, 1\]"),
    "k without top_k": (["pretrain", "--attention", "gin", "--adjacency-top-k", "3"],
                        r"adjacency_top_k is only used with adjacency_activation='top_k'"),
    "pna option on a gin arm": (["compare", "pretrain", "--arm", "x", "pna_blend=true"],
                                r"arm 'x': pna_blend=True needs attention_type='pna'"),
    "graph options on a standard arm": (["compare", "pretrain", "--arm", "x",
                                         "base=standard", "use_o_proj=true"],
                                        r"arm 'x': the standard-attention arm takes no"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_variant_values_are_one_line_and_exit_code_2(case, tmp_path, data_file, capsys):
    argv, message = BAD_VALUES[case]
    kind = "finetune" if "finetune" in argv[:2] else "pretrain"
    data = ["--data", data_file] + (["--model", "smollm2"] if kind == "finetune" else [])
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *data, "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert re.search(message, _error_line(capsys))
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


def _subparser(parser, *names):
    for name in names:
        (choices,) = [a.choices for a in parser._actions if isinstance(a.choices, dict)]
        parser = choices[name]
    return parser


@pytest.mark.parametrize("command", [["finetune"], ["compare", "finetune"],
                                     ["pretrain"], ["compare", "pretrain"]])
def test_help_shows_every_variant_flag_with_its_default(command, capsys):
    parser = _subparser(build_parser(), *command)
    formatter = parser._get_formatter()
    flags = SPARSE_GIN_FLAGS if command[-1] == "finetune" else GRAPH_FLAGS
    names = [flag for _, flag, _, _ in flags] + (["--arms"] if command[0] == "compare" else [])
    for action in parser._actions:
        if set(action.option_strings) & set(names):
            assert "default" in formatter._get_help_string(action), action.option_strings
            names = [n for n in names if n not in action.option_strings]
    assert names == []  # every flag was found
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    if command[-1] == "finetune":
        assert "(default: matched to LoRA's trainable parameters at --lora-rank)" in text
        assert "sharpening slope α of A' = σ(α(A - τ)) (default: 10.0)" in text
    else:
        assert "γ: the per-head MLPs have γ·head_dim hidden units (default: 0.5)" in text
        assert "an output projection after the heads (default: False)" in text
