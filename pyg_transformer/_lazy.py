"""Lazy public names, and registration unless the command line runs.

The public names of a package are imported on first access (PEP 562 ``__getattr__``).
``import pyg_transformer`` registers the ``graph_llama`` Auto classes and the ``sparse_gin``
peft method right away (importing torch), so that ``peft.PeftModel.from_pretrained`` or
``AutoModelForCausalLM.from_pretrained`` work after it, except when the process is the
``pyg-transformer`` command line (the console script or ``python -m pyg_transformer``):
there the commands import, and so register, what they use, and ``--help`` or an argument
error answers without importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

#: the modules whose import registers the Auto classes and the peft method
REGISTERING_MODULES = ("pyg_transformer.models", "pyg_transformer.adapters")
#: the console script and the module of the command line
CLI_SCRIPT, CLI_MODULE = "pyg-transformer", "pyg_transformer"


def lazy_module(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names ``exports`` (name ->
    defining module) are imported on first access."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


def running_the_cli(argv: list[str] | None = None) -> bool:
    """Whether this process is ``pyg-transformer`` or ``python -m pyg_transformer[.cli]``
    (read from ``sys.orig_argv``, which is complete while the package is imported)."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].split(".")[0] == CLI_MODULE
    return any(os.path.basename(arg) == CLI_SCRIPT for arg in argv[:2])


def register_unless_cli() -> None:
    """Import :data:`REGISTERING_MODULES` unless the command line runs."""
    if not running_the_cli():
        for module in REGISTERING_MODULES:
            importlib.import_module(module)
