"""Named arms of a comparison: a method and the options it overrides (paper Figs. 6, 8, 12).

An :class:`Arm` is what one ``runs/<name>-seed<N>/`` folder trains. Built-in arms live in
:data:`~pyg_transformer.experiments.finetune.FINETUNE_ARMS` and
:data:`~pyg_transformer.experiments.pretrain.PRETRAIN_ARMS`; :func:`define_arm` builds
another from ``KEY=VALUE`` texts (the CLI's ``--arm``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: a valid arm name (it names a folder): a letter or digit, then letters, digits, ``._+-``
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass
class Arm:
    """One arm of a comparison.

    Attributes:
        name: the arm's name; its runs go to ``runs/<name>-seed<N>/``.
        method: fine-tuning ``"sparse-gin"`` or ``"lora"``; pre-training ``"gin"``,
            ``"pna"`` or ``"standard"``.
        options: overrides of the settings' options for this arm: Sparse-GIN arms take
            :class:`~pyg_transformer.SparseGinConfig` fields and ``hidden_dim_scale``,
            GIN/PNA arms the graph options of
            :class:`~pyg_transformer.GraphLlamaConfig`; LoRA and standard arms none.
    """

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not ARM_NAME.match(self.name):
            raise ValueError(f"arm name must be letters, digits and '._+-' (starting with a "
                             f"letter or digit), got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"method", "options"}``, as recorded in ``experiment.json``."""
        return {"method": self.method, "options": dict(self.options)}


def parse_value(annotation: str, text: str) -> Any:
    """``text`` as a value of the type ``annotation`` (a dataclass field's annotation
    string such as ``"int | None"`` or ``"list[int] | None"``); lists are comma-separated.

    Raises:
        ValueError: ``text`` is no value of that type.
    """
    kinds = [kind.strip() for kind in annotation.split("|")]
    if "None" in kinds and text.lower() == "none":
        return None
    for kind in kinds:
        if kind.startswith(("list[", "tuple[")):
            inner = kind[kind.index("[") + 1:].split(",")[0].rstrip("]")
            return [parse_value(inner, item) for item in text.split(",") if item]
        if kind == "bool" and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if kind in ("int", "float"):
            try:
                return int(text) if kind == "int" else float(text)
            except ValueError:
                continue
        if kind == "str":
            return text
    raise ValueError(f"{text!r} is not a value of type {annotation}")


def define_arm(name: str, assignments: list[str], builtins: dict[str, Arm], default_base: str,
               annotations: dict[str, str]) -> Arm:
    """An arm called ``name`` from ``KEY=VALUE`` texts.

    ``base=ARM`` picks the built-in arm to start from (default ``default_base``); every
    other key is an option of ``annotations`` (option name -> annotation string, see
    :func:`parse_value`) that overrides the base arm's.

    Raises:
        ValueError: a text without ``=``, an unknown key or base, a bad value, or a
            ``name`` that is a built-in arm's.
    """
    if name in builtins:
        raise ValueError(f"arm {name!r} is a built-in arm; give the new arm another name")
    base, options = default_base, {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"arm {name!r}: expected KEY=VALUE, got {assignment!r}")
        if key == "base":
            base = text
        elif key not in annotations:
            raise ValueError(f"arm {name!r}: unknown option {key!r} (options: base, "
                             f"{', '.join(annotations)})")
        else:
            try:
                options[key] = parse_value(annotations[key], text)
            except ValueError as error:
                raise ValueError(f"arm {name!r}: {key}: {error}") from None
    if base not in builtins:
        raise ValueError(f"arm {name!r}: base must be a built-in arm {tuple(builtins)}, "
                         f"got {base!r}")
    return Arm(name, builtins[base].method, {**builtins[base].options, **options})
