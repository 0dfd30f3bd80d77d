"""pyg_transformer.compat: every private or version-specific dependency API we use still
exists and behaves as used, on the checked releases; no other module touches one."""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import inspect
import warnings
from pathlib import Path
from random import Random

import peft
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pyg_transformer import compat
from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model
from pyg_transformer.adapters.sparse_gin.model import (
    RESIDUAL_READERS,
    find_decoder_layers,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyg_transformer"
TINY = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}


def tiny_llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


# ----------------------------------------------------------------------------- version guards
@pytest.mark.parametrize("entry", compat.ENTRIES, ids=lambda e: e.api.split(" ")[0])
def test_installed_release_was_checked(entry):
    assert entry.checked(), (
        f"{entry.api}: checked against {entry.package} >={entry.low},<{entry.high}, but "
        f"{entry.installed()} is installed; re-check this API and update its range in "
        "pyg_transformer/compat.py")


def test_entry_guard_and_require():
    entry = compat.Entry("x._y", "peft", "0.21", "0.22")
    assert entry.checked("0.21.5") and not entry.checked("0.22.0")
    with pytest.raises(ImportError, match=r"peft 0.30.0 is outside the supported range "
                                          r">=0.21,<0.22: pyg_transformer uses x._y"):
        entry.require("0.30.0")


# ----------------------------------------------------------------------------- transformers
def test_attn_implementation():
    model = tiny_llama()
    assert isinstance(inspect.getattr_static(type(model.config), "_attn_implementation"),
                      property), "PretrainedConfig._attn_implementation is no property any more"
    model.set_attn_implementation("eager")
    assert compat.attn_implementation(model.config) == "eager"
    model.set_attn_implementation("sdpa")
    assert compat.attn_implementation(model.config) == "sdpa"
    assert compat.attn_implementation(object()) is None


def test_can_set_attn_implementation():
    assert callable(getattr(LlamaForCausalLM, "_can_set_attn_implementation", None)), (
        "PreTrainedModel._can_set_attn_implementation is gone")
    assert LlamaForCausalLM._can_set_attn_implementation() is True
    assert compat.supports_attention_interface(tiny_llama())
    assert not compat.supports_attention_interface(torch.nn.Linear(2, 2))


def test_hf_peft_config_loaded_is_set_by_load_adapter():
    from transformers.integrations.peft import PeftAdapterMixin

    source = inspect.getsource(PeftAdapterMixin.load_adapter)
    assert "self._hf_peft_config_loaded = True" in source, (
        "transformers' load_adapter no longer sets PreTrainedModel._hf_peft_config_loaded")
    model = tiny_llama()
    assert not compat.loaded_by_transformers(model)
    model._hf_peft_config_loaded = True
    assert compat.loaded_by_transformers(model)


def test_forward_decorators():
    from transformers.utils.generic import merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs

    assert callable(merge_with_config_defaults) and callable(capture_outputs)
    assert "tie_last_hidden_states" in inspect.signature(capture_outputs).parameters

    def forward(self, input_ids=None, **kwargs):
        return input_ids

    assert callable(compat.merge_with_config_defaults(forward))
    assert callable(compat.capture_outputs(forward))
    assert callable(compat.capture_outputs(tie_last_hidden_states=False)(forward))


# ----------------------------------------------------------------------------- peft
def test_peft_type_member():
    from peft.utils import PeftType

    for name in ("_member_map_", "_value2member_map_", "_member_names_"):
        assert hasattr(PeftType, name), f"peft.utils.PeftType.{name} is gone"
    member = compat.sparse_gin_peft_type()
    assert member is peft.PeftType.SPARSE_GIN is PeftType("SPARSE_GIN")
    assert isinstance(member, str) and member.value == member.name == "SPARSE_GIN"
    assert "SPARSE_GIN" in PeftType._member_names_ and member in list(PeftType)
    compat.check_peft_version()


# ----------------------------------------------------------------------------- torch
class _Owner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 2)
        self.inner.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        return output


def test_forward_hooks_follow_a_deep_copy():
    owner = _Owner()
    (hook,) = compat.forward_hooks(owner.inner)
    assert hook.__self__ is owner
    twin = copy.deepcopy(owner)
    (twin_hook,) = compat.forward_hooks(twin.inner)
    assert twin_hook.__self__ is twin
    assert compat.forward_hooks(torch.nn.Linear(2, 2)) == []


def test_compiled_module_child():
    linear = torch.nn.Linear(2, 2)
    compiled = torch.compile(linear)
    assert dict(compiled.named_children()).get(compat.COMPILED_MODULE_CHILD) is linear, (
        f"torch.compile no longer keeps the module as child {compat.COMPILED_MODULE_CHILD!r}")


# ----------------------------------------------------------------------------- GSM templates
def test_gsm_template_helpers():
    gsm = compat.import_gsm()
    from multilingual_gsm_symbolic import _helpers

    for name in ("parse_value", "eval_node", "EVAL_CONTEXT_HELPERS"):
        assert hasattr(_helpers, name), f"multilingual_gsm_symbolic._helpers.{name} is gone"
    template = next(t for t in gsm.load_data("eng") if t.id_orig == 661)
    for name in ("_get_all_possible_assignments", "_condition_asts",
                 "_evaluate_constrained_init_lines", "_precompute_unconstrained",
                 "_generate_question"):
        assert hasattr(template, name), f"AnnotatedQuestion.{name} is gone"
    replacements = gsm.load_replacements("eng")
    candidates = compat.gsm_candidates(template, replacements)
    assert candidates and all(isinstance(options, list) and options for options in candidates)
    valid = compat.gsm_valid_assignments(template, replacements)
    assert valid and all(isinstance(v, dict) for v in valid)
    rng = Random(0)
    drawn = [compat.gsm_satisfies(template, [rng.choice(o) for o in candidates])
             for _ in range(200)]
    assert any(d is None for d in drawn) or all(d in valid for d in drawn)
    assert all(d in valid for d in drawn if d is not None)
    unconstrained = compat.gsm_unconstrained_choices(template, replacements)
    question = compat.gsm_question(template, replacements, rng, valid[0], unconstrained)
    assert isinstance(question.question, str) and "####" in question.answer
    with pytest.raises(ImportError, match="0.5.x"):
        compat.check_gsm_version("0.6.0")


# ----------------------------------------------------------------------------- argparse
def test_argparse_helpers():
    parser = argparse.ArgumentParser()
    parser.add_argument("--x")
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("one")
    actions = compat.parser_actions(parser)
    assert any(compat.is_help_action(a) for a in actions)
    assert sum(compat.is_subparsers_action(a) for a in actions) == 1
    assert [a.dest for a in actions if a.option_strings == ["--x"]] == ["x"]
    assert compat.subparsers_of(parser) == {"one": one} and compat.subparsers_of(one) == {}


# ----------------------------------------------------------------------------- subclass hooks
@pytest.mark.parametrize("base", sorted(compat.SUBCLASS_HOOKS))
def test_subclass_hooks_exist_on_their_base_class(base):
    module, _, name = base.partition(":")
    cls = getattr(importlib.import_module(module), name)
    for hook in compat.SUBCLASS_HOOKS[base]:
        assert callable(getattr(cls, hook, None)), f"{base}.{hook} is gone: our override is dead"


# ----------------------------------------------------------------------------- support table
@pytest.mark.parametrize("model_type", sorted(RESIDUAL_READERS))
def test_supported_model_types(model_type):
    """Every supported model type adapts, its reader exists, and a zero-scale adapter
    leaves the logits unchanged while a non-zero one changes them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = AutoConfig.for_model(model_type, **TINY, n_embd=32, n_layer=2, n_head=4,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config).eval()
    _, layers, _ = find_decoder_layers(base)
    assert isinstance(getattr(layers[0], RESIDUAL_READERS[model_type]), torch.nn.Module)
    ids = torch.randint(3, 64, (1, 6))
    with torch.no_grad():
        expected = base(ids).logits
        zero = get_sparse_gin_model(copy.deepcopy(base), SparseGinConfig(scale_init="zero"))
        torch.testing.assert_close(zero(ids).logits, expected)
        adapted = get_sparse_gin_model(copy.deepcopy(base), SparseGinConfig(
            scale_init="constant", epsilon=0.0))
        assert not torch.allclose(adapted(ids).logits, expected)


def test_unsupported_model_type_names_the_supported_ones():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma = Gemma2ForCausalLM(Gemma2Config(**TINY))
    with pytest.raises(ValueError, match=r"model type 'gemma2'.*supported are gemma, gpt2, "
                                         r"llama"):
        get_sparse_gin_model(gemma, SparseGinConfig())


# ----------------------------------------------------------------------------- private names
#: private names of other packages used outside compat.py: (file, name) -> why
ALLOWED_ELSEWHERE: dict[tuple[str, str], str] = {}
COMPAT = "pyg_transformer/compat.py"
GETATTR_FAMILY = {"getattr", "hasattr", "setattr", "delattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _parse(path: Path) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def own_private_names(trees: dict[str, ast.Module]) -> tuple[set[str], set[str]]:
    """``(private names pyg_transformer defines, its class names)``: functions, classes,
    module- and class-level assignments and ``self._x``/``cls._x`` attributes, less the
    base-class hooks of :data:`compat.SUBCLASS_HOOKS` (those belong to the base)."""
    names, classes = set(), set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                if isinstance(node, ast.ClassDef):
                    classes.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
    hooks = {hook for hooks in compat.SUBCLASS_HOOKS.values() for hook in hooks}
    return {n for n in names if _is_private(n)} - hooks, classes


def _receiver_is_ours(node: ast.expr, classes: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls") or node.id in classes
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "super")


def foreign_private_uses(path: str, tree: ast.Module, own: set[str],
                         classes: set[str]) -> list[tuple[str, int, str]]:
    """``(file, line, name)`` of every use of another package's private name."""
    uses = []
    for node in ast.walk(tree):
        found = []
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            if not _receiver_is_ours(node.value, classes) and node.attr not in own:
                found.append(node.attr)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if any(_is_private(p) for p in a.name.split("."))
                      and not a.name.startswith("pyg_transformer")]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module and (
                node.module.split(".")[0] != "pyg_transformer"):
            found += [p for p in node.module.split(".") if _is_private(p)]
            found += [a.name for a in node.names if _is_private(a.name)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in GETATTR_FAMILY and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _is_private(node.args[1].value) and node.args[1].value not in own):
            found.append(node.args[1].value)
        uses += [(path, getattr(node, "lineno", 0), name) for name in found]
    return uses


def package_trees() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): _parse(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_only_compat_touches_other_packages_private_names():
    trees = package_trees()
    assert COMPAT in trees
    own, classes = own_private_names(trees)
    uses = [use for path, tree in trees.items() if path != COMPAT
            for use in foreign_private_uses(path, tree, own, classes)
            if (use[0], use[2]) not in ALLOWED_ELSEWHERE]
    assert not uses, "private names of other packages outside pyg_transformer/compat.py " \
        "(move them into compat): " + ", ".join(f"{p}:{line} {n}" for p, line, n in uses)


@pytest.mark.parametrize("snippet, name", [
    ("torch.nn.Module()._forward_hooks", "_forward_hooks"),
    ("model.config._attn_implementation", "_attn_implementation"),
    ("from multilingual_gsm_symbolic import _helpers", "_helpers"),
    ("import torch._dynamo", "torch._dynamo"),
    ("from torch._dynamo import eval_frame", "_dynamo"),
    ("getattr(model, '_hf_peft_config_loaded', False)", "_hf_peft_config_loaded"),
    ("SparseGinModel._remove_adapter_name_from_key", None),
    ("self._whatever", None),
    ("super()._init_weights(module)", None),
    ("other._init_weights(module)", "_init_weights"),
])
def test_private_name_check_catches(snippet, name):
    trees = package_trees()
    own, classes = own_private_names(trees)
    uses = foreign_private_uses("x.py", ast.parse(snippet), own, classes)
    assert [n for _, _, n in uses] == ([name] if name else [])
