"""Checks of the built documentation site (``make docs`` -> ``docs/_build/html``).

Opens every built page and fails on assets loaded from the network (CDN scripts, styles,
images or fonts), on broken local links and images, and on pages without content; checks
that the gallery has a page per example with its output and figures, and that the
Concepts page shows the figures it promises. Skipped when the site has not been built,
unless ``DOCS_SITE_REQUIRED=1`` (CI sets it after ``make docs``). Needs no browser.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("DOCS_SITE", ROOT / "docs" / "_build" / "html"))

if not (SITE / "index.html").is_file():
    if os.environ.get("DOCS_SITE_REQUIRED") == "1":
        raise RuntimeError(f"{SITE} has no index.html: run `make docs` first")
    pytest.skip("the docs site is not built (make docs)", allow_module_level=True)

#: pages that are generated scaffolding rather than content
NO_CONTENT_CHECK = {"search.html", "genindex.html", "py-modindex.html"}
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.assets: list[tuple[str, str]] = []  # (tag.attr, url) the browser loads
        self.links: list[str] = []               # <a href>
        self.images: list[str] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._article = 0
        self._style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.assets.append(("script.src", attrs["src"]))
        elif tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower()
            if any(r in rel for r in ("stylesheet", "icon", "preload", "modulepreload")):
                self.assets.append(("link.href", attrs["href"]))
        elif tag in ("img", "source", "iframe", "embed") and attrs.get("src"):
            self.assets.append((f"{tag}.src", attrs["src"]))
            if tag == "img":
                self.images.append(attrs["src"])
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "style":
            self._style = True
        if tag == "article":
            self._article += 1

    def handle_endtag(self, tag):
        if tag == "article":
            self._article -= 1
        if tag == "style":
            self._style = False

    def handle_data(self, data):
        if self._style:
            self.styles.append(data)
        if self._article > 0:
            self.text.append(data)


def pages() -> list[Path]:
    return sorted(p for p in SITE.rglob("*.html") if "_sources" not in p.parts
                  and "_modules" not in p.parts)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def local_target(page: Path, url: str) -> Path | None:
    """The file a relative URL points to, or None for external / in-page links."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or REMOTE.match(url):
        return None
    if not parts.path:
        return None  # "#anchor" or "?query"
    return (page.parent / unquote(parts.path)).resolve()


PAGES = pages()


def test_site_has_the_sections():
    names = {p.relative_to(SITE).as_posix() for p in PAGES}
    for required in ("index.html", "guides/install.html", "get_started/quickstart.html",
                     "concepts/theory.html", "gallery/index.html", "results.html",
                     "api/cli.html", "guides/cli/distributed.html"):
        assert required in names, required


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.relative_to(SITE).as_posix())
def test_page(path: Path):
    page = parse(path)
    for where, url in page.assets:
        assert not REMOTE.match(url), f"{where}={url!r} loads from the network"
    for css in page.styles:
        assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", css), "CSS url() to the network"
        assert "@import" not in css or not re.search(r"@import\s+(url\()?['\"]?(https?:)?//",
                                                     css)
    for url in [u for _, u in page.assets] + page.links:
        target = local_target(path, url)
        if target is not None:
            assert target.exists(), f"broken link or asset {url!r} -> {target}"
    if path.name not in NO_CONTENT_CHECK:
        text = " ".join(" ".join(page.text).split())
        assert len(text) >= 150, f"page without content ({len(text)} characters)"


def test_static_css_and_js_load_nothing_remote():
    for path in (SITE / "_static").rglob("*"):
        if path.suffix == ".css":
            css = path.read_text(encoding="utf-8", errors="replace")
            assert not re.search(r"@import\s+(url\()?['\"]?(https?:)?//", css), path


def test_math_is_rendered_by_the_bundled_mathjax():
    theory = (SITE / "concepts" / "theory.html").read_text(encoding="utf-8")
    assert 'class="math' in theory
    scripts = [u for w, u in parse(SITE / "concepts" / "theory.html").assets
               if w == "script.src" and "mathjax" in u.lower()]
    assert scripts, "no MathJax script on a page with math"
    for url in scripts:
        target = local_target(SITE / "concepts" / "theory.html", url)
        assert target is not None and target.is_file(), url
    # MathJax finds its fonts and components relative to its own script
    assert (SITE / "_static" / "mathjax" / "output" / "chtml" / "fonts").is_dir()


def test_gallery_has_an_entry_per_example_with_output_and_figures():
    examples = sorted((ROOT / "examples").glob("*.py"))
    assert examples
    index = (SITE / "gallery" / "index.html").read_text(encoding="utf-8")
    for script in examples:
        page = SITE / "gallery" / f"{script.stem}.html"
        assert page.is_file(), f"no gallery page for {script.name}"
        assert f"{script.stem}.html" in index
        parsed = parse(page)
        assert parsed.images, f"{script.name}: no figure"
        text = " ".join(parsed.text)
        assert "Output" in text and "Source" in text
        output = (ROOT / "docs" / "gallery" / script.stem / "output.txt").read_text()
        assert output.strip() and output.strip().splitlines()[0].strip() in text


def test_figures_a_reader_looks_at():
    def images(name):
        return {Path(u).name for u in parse(SITE / name).images}

    theory = images("concepts/theory.html")
    for figure in ("edge_direction_adjacency.png", "edge_direction_graph.png",
                   "smollm2_adjacency_aggregated.png", "smollm2_adjacency_sharpened.png",
                   "smollm2_adjacency_thresholded.png", "smollm2_attention_graph.png",
                   "alpha_per_layer.png", "lambda_over_training.png",
                   "training_curves.png"):
        assert figure in theory, figure
    assert "smollm2_attention_graph.png" in images("index.html")


def test_every_public_name_has_an_api_entry():
    import importlib
    import pkgutil

    import pyg_transformer

    api = " ".join(p.read_text(encoding="utf-8") for p in (SITE / "api").glob("*.html"))
    ids = set(re.findall(r'id="(pyg_transformer[\w.]*)"', api))
    names = {name: "pyg_transformer" for name in pyg_transformer.__all__}
    for info in pkgutil.walk_packages(pyg_transformer.__path__, "pyg_transformer."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the command line
        module = importlib.import_module(info.name)
        names.update({name: info.name for name in getattr(module, "__all__", [])})
    names.update({"find_decoder_layers": "", "GraphLlamaDecoderLayer": "",
                  "check_graph_options": "", "build_parser": "", "main": "cli"})
    missing = [f"{where}.{name}" for name, where in names.items()
               if not any(i.rsplit(".", 1)[-1] == name for i in ids)]
    assert not missing, f"not in the API reference: {missing}"
    assert "pyg_transformer.cli.main" in ids


def test_the_checker_sees_remote_assets():
    page = Page()
    page.feed('<link rel="stylesheet" href="https://cdn.example/x.css">'
              '<script src="//cdn.example/mathjax.js"></script><img src="figure.png">'
              '<a href="https://pyg.org">PyG</a>')
    remote = [url for _, url in page.assets if REMOTE.match(url)]
    assert remote == ["https://cdn.example/x.css", "//cdn.example/mathjax.js"]
    assert page.images == ["figure.png"] and page.links == ["https://pyg.org"]
