"""GIN-/PNA-Attention inside GraphLlama: causality, dense == PyG, padding invariance."""

import itertools

import pytest
import torch

from pyg_transformer import GraphLlamaConfig, GraphLlamaForCausalLM

from graph_llama_helpers import ACTIVATIONS, tiny_config

GRAPH_TYPES = ("gin", "pna")
BACKENDS = ("dense", "pyg")


def model_for(attention_type, activation, backend, seed=0, **extra):
    torch.manual_seed(seed)
    config = tiny_config(
        attention_type=attention_type, adjacency_activation=activation,
        graph_backend=backend, **ACTIVATIONS[activation], **extra,
    )
    return GraphLlamaForCausalLM(config).eval()


CASES = [
    (t, a, b) for t, a, b in itertools.product(GRAPH_TYPES, ACTIVATIONS, BACKENDS)
] + [("standard", "softmax", "auto")]


@pytest.mark.parametrize("attention_type,activation,backend", CASES)
def test_causality_by_perturbation(attention_type, activation, backend):
    model = model_for(attention_type, activation, backend)
    torch.manual_seed(1)
    ids = torch.randint(3, 64, (2, 10))
    k = 4
    perturbed = ids.clone()
    perturbed[:, k] = (ids[:, k] + 7) % 61 + 3
    with torch.no_grad():
        before, after = model(ids).logits, model(perturbed).logits
    diff = (before - after).abs().amax(dim=(0, 2))
    assert diff[:k].max() <= 1e-6, f"positions < {k} changed: {diff[:k]}"
    assert diff[k] > 1e-4
    assert diff[k + 1 :].max() > 1e-4, "no message passed from token k to later tokens"


def _copy(model_a, backend):
    config = GraphLlamaConfig.from_dict({**model_a.config.to_dict(), "graph_backend": backend})
    model_b = GraphLlamaForCausalLM(config).eval()
    model_b.load_state_dict(model_a.state_dict())
    return model_b


AGREE = list(itertools.product(
    GRAPH_TYPES, ["softmax", "top_k", "relu_threshold", "sigmoid"], [{}, {"value_projection": True,
                                                                          "use_o_proj": True}]
))


@pytest.mark.parametrize("attention_type,activation,extra", AGREE)
def test_dense_and_pyg_agree_with_gradients(attention_type, activation, extra):
    if attention_type == "pna":
        extra = {**extra, "pna_blend": True}
    if activation != "softmax" and activation != "top_k":
        extra = {**extra, "adjacency_tau_trainable": True}
    dense = model_for(attention_type, activation, "dense", **extra).train()
    pyg = _copy(dense, "pyg").train()
    assert pyg.model.layers[0].self_attn.backend == "pyg"
    torch.manual_seed(2)
    ids = torch.randint(3, 64, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in one sequence
    out_dense = dense(ids, attention_mask=mask, labels=ids)
    out_pyg = pyg(ids, attention_mask=mask, labels=ids)
    torch.testing.assert_close(out_pyg.logits, out_dense.logits, atol=1e-5, rtol=1e-5)
    out_dense.loss.backward()
    out_pyg.loss.backward()
    grads_pyg = dict(pyg.named_parameters())
    for name, param in dense.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(grads_pyg[name].grad, param.grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    "attention_type,activation,backend",
    [(t, a, b) for t in GRAPH_TYPES for a in ("softmax", "top_k", "relu_threshold")
     for b in BACKENDS] + [("standard", "softmax", "auto")],
)
def test_left_and_right_padding_give_equal_logits(attention_type, activation, backend):
    model = model_for(attention_type, activation, backend)
    torch.manual_seed(3)
    lengths = [7, 4]
    seqs = [torch.randint(3, 64, (n,)) for n in lengths]
    T = max(lengths)
    right = torch.zeros(2, T, dtype=torch.long)
    left = torch.zeros(2, T, dtype=torch.long)
    right_mask = torch.zeros(2, T, dtype=torch.long)
    left_mask = torch.zeros(2, T, dtype=torch.long)
    for b, s in enumerate(seqs):
        right[b, : len(s)], right_mask[b, : len(s)] = s, 1
        left[b, T - len(s) :], left_mask[b, T - len(s) :] = s, 1
    with torch.no_grad():
        out_r = model(right, attention_mask=right_mask).logits
        out_l = model(left, attention_mask=left_mask).logits
        alone = [model(s[None]).logits[0] for s in seqs]
    for b, s in enumerate(seqs):
        n = len(s)
        torch.testing.assert_close(out_r[b, :n], out_l[b, T - n :], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_r[b, :n], alone[b], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(out_r).all() and torch.isfinite(out_l).all()


@pytest.mark.parametrize("attention_type", GRAPH_TYPES + ("standard",))
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_one_and_sequence_of_one(attention_type, backend):
    activation = "top_k"
    if attention_type == "standard":
        activation, backend = "softmax", "auto"
    model = model_for(attention_type, activation, backend)
    with torch.no_grad():
        one = model(torch.tensor([[5]])).logits
        assert one.shape == (1, 1, 64) and torch.isfinite(one).all()
        row = model(torch.tensor([[5, 9, 11]])).logits
        torch.testing.assert_close(row[:, :1], one, atol=1e-5, rtol=1e-5)
        out = model.generate(torch.tensor([[5]]), max_new_tokens=3, min_new_tokens=3,
                             do_sample=False)
    assert out.shape == (1, 4)


def test_invalid_mask_shape_is_rejected():
    model = model_for("gin", "softmax", "dense")
    ids = torch.randint(3, 64, (2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="2D padding mask"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 5))
