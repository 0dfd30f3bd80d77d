"""Regenerate the example gallery: run every script of ``examples/`` once, with small
settings, and store what it printed and drew under ``docs/gallery/<name>/``.

    python docs/gallery.py                      # all examples (a few minutes on 2 CPU cores)
    python docs/gallery.py attention_graphs     # one of them

The docs build never runs the examples (they take minutes); it includes the committed
``output.txt`` and PNGs through the generated ``docs/gallery/<name>.rst`` pages. Each
example stays a plain runnable script; ``--figures DIR`` is the only flag the gallery adds.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GALLERY = ROOT / "docs" / "gallery"

#: the gallery's settings per example (small enough for a CPU; the defaults are larger)
SETTINGS: dict[str, list[str]] = {
    "attention_graphs": ["--seq-len", "24", "--top-k", "8"],
    "train_gin_transformer": ["--steps", "60", "--batch-size", "8", "--per-template", "3"],
    "finetune_sparse_gin": ["--steps", "10", "--batch-size", "1", "--max-length", "192",
                            "--heldout", "8"],
}
#: caption of each figure an example may write
CAPTIONS = {
    "adjacency_aggregated": "Head-summed attention probabilities, clamped to 1.",
    "adjacency_sharpened": "After sigmoid sharpening.",
    "adjacency_thresholded": "After thresholding (and top-k): the edges that remain.",
    "attention_graph": "The resulting causal graph: every arc goes from a key j to a "
                       "later query i.",
    "training_curves": "Training (solid) and held-out validation (dashed) loss.",
    "alpha_per_layer": "Learned sharpening alpha per layer.",
    "lambda_over_training": "Sparse-GIN's merge scale lambda per layer over training.",
}


def shrink(png: Path, max_width: int = 900, colors: int = 128) -> None:
    """Keep committed figures small: at most ``max_width`` pixels wide, a palette PNG."""
    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)),
                                 Image.LANCZOS)
        image.quantize(colors).save(png, optimize=True)


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


def run(script: Path) -> None:
    name = script.stem
    out = GALLERY / name
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(script), *SETTINGS.get(name, []), "--figures", "figures"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
               "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"{script.name} failed with exit code {proc.returncode}")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for png in sorted((Path(tmp) / "figures").glob("*.png")):
            shutil.copy(png, out / png.name)
            shrink(out / png.name)
    shown = " ".join(["python", f"examples/{script.name}", *SETTINGS.get(name, []),
                      "--figures", "figures"])
    (out / "command.txt").write_text(f"{shown}\n")
    (out / "output.txt").write_text(proc.stdout)
    (out / "seconds.txt").write_text(f"{seconds:.0f}\n")
    print(f"{script.name}: {seconds:.0f} s, {len(list(out.glob('*.png')))} figures")


def shorten(output: str, width: int = 150) -> str:
    """Transformers' ``Trainer`` prints each log as a dict with every graph scalar
    (``lambda/layer_0`` ... for 30 layers): shown cut to ``width`` characters."""
    lines = []
    for line in output.splitlines():
        if line.startswith("{") and len(line) > width:
            line = line[:width].rsplit(", ", 1)[0] + ", ...}"
        lines.append(line)
    return "\n".join(lines)


def docstring(script: Path) -> tuple[str, str]:
    text = ast.get_docstring(ast.parse(script.read_text())) or script.stem
    first, _, rest = text.partition("\n")
    return first.strip(), rest.strip()


def write_pages() -> None:
    """One page per example plus the index (``docs/gallery/index.rst``)."""
    cards = []
    for script in examples():
        name = script.stem
        title, body = docstring(script)
        out = GALLERY / name
        figures = sorted(out.glob("*.png"), key=lambda p: list(CAPTIONS).index(p.stem)
                         if p.stem in CAPTIONS else len(CAPTIONS))
        command = (out / "command.txt").read_text().strip() if out.exists() else ""
        seconds = (out / "seconds.txt").read_text().strip() if out.exists() else "?"
        short, _, rest = title.partition(":")
        short, rest = short.rstrip("."), rest.strip()
        lines = [f".. _gallery-{name}:", "", short, "=" * len(short), "",
                 f"*{rest[0].upper() + rest[1:]}*" if rest else "", "", body, "",
                 "Run it", "------", "", ".. code-block:: console", "",
                 f"    $ {command}", "",
                 f"This run took {seconds} s of wall time on the project's 2-core CPU "
                 "machine (regenerate with ``python docs/gallery.py``).", ""]
        if figures:
            lines += ["Figures", "-------", "", ".. container:: gallery-figures", ""]
            for png in figures:
                lines += [f"   .. figure:: {name}/{png.name}", f"      :alt: {png.stem}", "",
                          f"      {CAPTIONS.get(png.stem, png.stem)}", ""]
        raw = (out / "output.txt").read_text() if out.exists() else ""
        output = shorten(raw)
        lines += ["Output", "------", ""]
        if output != "\n".join(raw.splitlines()):
            lines += ["(The ``Trainer``'s log dictionaries are cut to 150 characters; the full "
                      f"output is ``docs/gallery/{name}/output.txt``.)", ""]
        lines += [".. code-block:: text", ""]
        lines += [f"    {line}".rstrip() for line in output.splitlines()] + [""]
        lines += ["Source", "------", "",
                  f":download:`Download {script.name} <../../examples/{script.name}>`", "",
                  f".. literalinclude:: ../../examples/{script.name}", "   :language: python",
                  ""]
        (GALLERY / f"{name}.rst").write_text("\n".join(lines))
        thumb = figures[-1].name if figures else None
        cards.append((name, short, rest, thumb))
    index = ["Gallery", "=======", "",
             "Every script in ``examples/`` with what it printed and drew on a CPU. The "
             "scripts are plain Python: run them as shown on each page (the gallery adds "
             "``--figures DIR`` to save the figures). The docs build does not run them; "
             "``python docs/gallery.py`` does, and the output is committed.", "",
             ".. toctree::", "   :hidden:", ""]
    index += [f"   {name}" for name, _, _, _ in cards]
    index += ["", ".. container:: gallery-grid", ""]
    for name, short, rest, thumb in cards:
        entry = f":ref:`{short} <gallery-{name}>`" + (f": {rest}" if rest else "")
        if thumb:
            index += [f"   .. figure:: {name}/{thumb}", f"      :target: {name}.html",
                      f"      :alt: {name}", "", f"      {entry}", ""]
        else:
            index += [f"   {entry}", ""]
    (GALLERY / "index.rst").write_text("\n".join(index))


def main(argv: list[str]) -> None:
    names = set(argv)
    for script in examples():
        if not names or script.stem in names:
            run(script)
    write_pages()


if __name__ == "__main__":
    main(sys.argv[1:])
