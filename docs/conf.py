"""Sphinx configuration for pyg_transformer.

The site builds offline: the theme (furo) ships its assets, MathJax comes from the
``sphinx-mathjax-offline`` package (copied into ``_static/mathjax``), and the gallery pages
include committed output of the example scripts (``docs/gallery.py`` regenerates it).
``tests/test_docs_site.py`` checks the built HTML for CDN assets and broken links.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

project = "pyg_transformer"
author = "pyg_transformer developers"
copyright = "2025, pyg_transformer developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # bundled MathJax 3: no CDN
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinxarg.ext",
]
# the bundled copy (sphinx-mathjax-offline copies it to _static/mathjax)
mathjax_path = "mathjax/tex-chtml.js"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
suppress_warnings = ["ref.python"]
exclude_patterns = ["_build", "gallery/*/output.txt"]

html_theme = "furo"
html_title = "pyg_transformer"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
}
pygments_style = "sphinx"
pygments_dark_style = "monokai"
copybutton_prompt_text = r"\$ |>>> "
copybutton_prompt_is_regexp = True
