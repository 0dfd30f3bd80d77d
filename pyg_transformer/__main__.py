"""``python -m pyg_transformer`` runs the ``pyg-transformer`` command line."""

import sys

from pyg_transformer.cli import main

sys.exit(main())
