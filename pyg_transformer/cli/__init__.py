"""The ``pyg-transformer`` command line (see ``pyg-transformer --help``)."""

from pyg_transformer.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
