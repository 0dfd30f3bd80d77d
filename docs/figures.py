"""Regenerate the figures of the Concepts page (``docs/images/``) with the library's own
plotting code (:mod:`pyg_transformer.viz`):

* ``edge_direction_*.png``: a five-token toy graph, as adjacency and as arcs;
* ``smollm2_adjacency_*.png`` and ``smollm2_attention_graph.png``: the Sparse-GIN pipeline
  (paper Fig. 15) on SmolLM2-135M-Instruct's real attention for a GSM8K question:
  head-summed probabilities, after sharpening, after thresholding, and the graph.

    python docs/figures.py      # about a minute on 2 CPU cores (loads SmolLM2 offline)

The training figures (alpha per layer, lambda over training, loss curves) come from the
example runs of the gallery (``docs/gallery.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pyg_transformer.graph import attention_to_graph  # noqa: E402
from pyg_transformer.viz import plot_attention_adjacency, plot_attention_graph  # noqa: E402

sys.path.insert(0, str(ROOT / "docs"))
from gallery import shrink  # noqa: E402

IMAGES = ROOT / "docs" / "images"
LAYER = 14  # a middle layer of SmolLM2's 30
ALPHA, TAU, EPSILON = 10.0, 0.1, 0.6  # the paper's Sparse-GIN values


def toy() -> None:
    tokens = ["The", "cat", "sat", "on", "mats"]
    a = torch.tensor([[1.0, 0, 0, 0, 0],
                      [0.6, 0.4, 0, 0, 0],
                      [0.1, 0.7, 0.2, 0, 0],
                      [0.0, 0.1, 0.5, 0.4, 0],
                      [0.0, 0.6, 0.1, 0.0, 0.3]])
    shrink(plot_attention_adjacency(a, IMAGES / "edge_direction_adjacency.png", tokens=tokens,
                                    title="A[i, j]: row i receives from column j <= i"))
    shrink(plot_attention_graph(a, IMAGES / "edge_direction_graph.png", tokens=tokens,
                                title="edge j -> i: source j <= target i"))


def smollm2() -> None:
    from pyg_transformer.data import load_smollm2

    model, tokenizer = load_smollm2()
    model.config._attn_implementation = "eager"  # probabilities for output_attentions
    text = ("Sally has 3 boxes with 12 pencils each. She gives 7 pencils away. "
            "How many pencils are left?")
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    attn = out.attentions[LAYER].float()
    tokens = [t.replace("Ġ", "") for t in tokenizer.convert_ids_to_tokens(batch.input_ids[0])]
    mask = batch.attention_mask
    stages = {
        "aggregated": (attention_to_graph(attn, mask), "min(1, sum_h A_h)"),
        "sharpened": (attention_to_graph(attn, mask, sharpen_alpha=ALPHA, sharpen_tau=TAU),
                      f"A' = sigmoid({ALPHA:g} (A - {TAU:g}))"),
        "thresholded": (attention_to_graph(attn, mask, sharpen_alpha=ALPHA, sharpen_tau=TAU,
                                           threshold=EPSILON), f"edges: A' > {EPSILON:g}"),
    }
    for name, (graph, title) in stages.items():
        shrink(plot_attention_adjacency(graph, IMAGES / f"smollm2_adjacency_{name}.png",
                                        tokens=tokens, title=f"layer {LAYER}: {title}"))
        print(name, "edges:", graph.num_edges, "cross-token:", graph.num_cross_token_edges())
    shrink(plot_attention_graph(stages["thresholded"][0], IMAGES / "smollm2_attention_graph.png",
                                tokens=tokens))


if __name__ == "__main__":
    toy()
    smollm2()
