"""Figures (issue 5): every viz function writes a PNG; attention figures from a real model."""

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from pyg_transformer.graph import attention_to_graph
from pyg_transformer.viz import (
    plot_alpha_per_layer,
    plot_attention_adjacency,
    plot_attention_graph,
    plot_generalization_gap,
    plot_lambda_over_training,
    plot_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS = list("The cat sat")


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000


@pytest.fixture(scope="module")
def graph():
    """The sharpened, thresholded attention graph of layer 0 of a tiny random Llama."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         initializer_range=0.5)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 32, (2, len(TOKENS)))
    with torch.no_grad():
        attn = model(ids, output_attentions=True).attentions[0]
    return attention_to_graph(attn, head_reduction="sum", sharpen_alpha=10.0, sharpen_tau=0.1,
                              threshold=0.6)


def histories():
    def run(offset):
        train = [{"loss": 3.0 - 0.02 * s + offset, "step": s} for s in range(10, 101, 10)]
        evals = [{"eval_loss": 3.2 - 0.015 * s + offset, "step": s} for s in range(20, 101, 20)]
        return train + evals
    return run(0.0), run(0.1)


def test_attention_figures(graph, tmp_path):
    assert graph.num_cross_token_edges() > 0
    adjacency = plot_attention_adjacency(graph, tmp_path / "adjacency.png", tokens=TOKENS)
    drawing = plot_attention_graph(graph, tmp_path / "sub" / "graph.png", index=1, tokens=TOKENS)
    dense = plot_attention_adjacency(graph.to_dense()[0], tmp_path / "dense.png")
    for path in (adjacency, drawing, dense):
        assert_png(path)
    with Image.open(drawing) as image:  # figure size x dpi: width grows with the sequence
        width, height = image.size
    assert (width, height) == (int((3.0 + 0.45 * len(TOKENS)) * 120), int(4.0 * 120))


def test_training_figures(tmp_path):
    seed_a, seed_b = histories()
    lam = [{"step": s, **{f"lambda/layer_{l}": 0.1 * l + 0.001 * s for l in range(4)}}
           for s in range(0, 101, 20)]
    paths = [
        plot_alpha_per_layer(torch.tensor([1.0, 1.3, 1.8, 2.4]), tmp_path / "alpha.png"),
        plot_alpha_per_layer({"GIN": torch.rand(4), "PNA": torch.rand(4, 8)},
                             tmp_path / "alpha_models.png"),
        plot_lambda_over_training(lam, tmp_path / "lambda.png"),
        plot_lambda_over_training([{"step": s, **{f"lambda/layer_{l}": 0.01 * s for l in range(12)}}
                                   for s in (0, 10)], tmp_path / "lambda12.png"),
        plot_training_curves({"sparse-gin": [seed_a, seed_b], "lora": seed_b},
                             tmp_path / "curves.png", log_scale=True),
        plot_generalization_gap({"sparse-gin": [0.1, 0.2], "lora": 0.3},
                                tmp_path / "gap.png"),
    ]
    for path in paths:
        assert_png(path)


def test_bad_inputs(graph, tmp_path):
    with pytest.raises(ValueError, match="3 tokens for a graph of 11"):
        plot_attention_graph(graph, tmp_path / "g.png", tokens=["a", "b", "c"])
    with pytest.raises(ValueError, match="index 5 out of range"):
        plot_attention_adjacency(graph, tmp_path / "a.png", index=5)
    with pytest.raises(ValueError, match=r"\[T, T\]"):
        plot_attention_adjacency(torch.zeros(2, 3), tmp_path / "a.png")
    with pytest.raises(TypeError):
        plot_attention_adjacency([[0.0]], tmp_path / "a.png")
    with pytest.raises(ValueError, match="must end in .png"):
        plot_alpha_per_layer([1.0, 2.0], tmp_path / "alpha.pdf")
    with pytest.raises(ValueError, match="not finite"):
        plot_alpha_per_layer([1.0, float("nan")], tmp_path / "alpha.png")
    with pytest.raises(ValueError, match="lambda/layer_"):
        plot_lambda_over_training([{"step": 0, "loss": 1.0}], tmp_path / "l.png")
    with pytest.raises(ValueError, match="no run has"):
        plot_training_curves({"a": [{"step": 1, "lr": 0.1}]}, tmp_path / "c.png")
    with pytest.raises(TypeError, match="log history"):
        plot_training_curves({"a": [1.0, 2.0]}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="finite"):
        plot_generalization_gap({"a": float("inf")}, tmp_path / "gap.png")
    assert not list(tmp_path.glob("*.png"))  # nothing half-written
