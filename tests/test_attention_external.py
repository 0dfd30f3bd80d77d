"""External adjacency in GIN-/PNA-Attention: causal, padding-aware, both backends."""

import pytest
import torch

from pyg_transformer import AttentionGraph, GraphLlamaConfig, GraphLlamaForCausalLM
from pyg_transformer.graph import attention_to_graph

KW = {"softmax": {}, "top_k": {"adjacency_top_k": 2}, "sigmoid": {"adjacency_beta": 2.0}}


def build(attention_type="gin", activation="softmax", backend="auto", seed=0):
    torch.manual_seed(seed)
    config = GraphLlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
        attention_type=attention_type, adjacency_activation=activation,
        graph_backend=backend, **KW[activation],
    )
    return GraphLlamaForCausalLM(config).eval()


def random_external(batch, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, T, T, generator=gen) * (torch.rand(batch, T, T, generator=gen) > 0.6)


@pytest.mark.parametrize("attention_type", ["gin", "pna"])
@pytest.mark.parametrize("activation", ["softmax", "top_k", "sigmoid"])
def test_dense_and_pyg_agree_with_external_adjacency(attention_type, activation):
    dense = build(attention_type, activation, "dense")
    pyg = build(attention_type, activation, "pyg")
    pyg.load_state_dict(dense.state_dict())
    ids = torch.randint(3, 64, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    external = random_external(2, 8).requires_grad_(True)
    out_d = dense(ids, attention_mask=mask, external_adjacency=external).logits
    grad_d = torch.autograd.grad(out_d.sum(), external)[0]
    out_p = pyg(ids, attention_mask=mask, external_adjacency=external).logits
    grad_p = torch.autograd.grad(out_p.sum(), external)[0]
    torch.testing.assert_close(out_p, out_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_p, grad_d, atol=1e-5, rtol=1e-4)
    without = dense(ids, attention_mask=mask).logits
    assert (out_d - without).abs().max() > 1e-3  # the external edges matter
    # non-causal and padding entries get no gradient: they are not edges
    assert not grad_d.triu(1).any()
    assert not grad_d[1, :3].any() and not grad_d[1, :, :3].any()


@pytest.mark.parametrize("attention_type", ["gin", "pna"])
def test_external_adjacency_obeys_causality(attention_type):
    model = build(attention_type, "top_k")
    ids = torch.randint(3, 64, (1, 9))
    external = torch.ones(1, 9, 9)  # including every non-causal pair: must be ignored
    base = model(ids, external_adjacency=external).logits
    k = 5
    perturbed = ids.clone()
    perturbed[0, k] = (ids[0, k] + 5) % 61 + 3
    diff = (model(perturbed, external_adjacency=external).logits - base).abs().amax(-1)[0]
    assert diff[:k].max() <= 1e-6 and diff[k + 1 :].max() > 1e-4
    upper_only = torch.ones(1, 9, 9).triu(1)
    torch.testing.assert_close(model(ids, external_adjacency=upper_only).logits,
                               model(ids).logits)


def test_coo_graph_equals_dense_and_cache_rows():
    model = build("gin", "softmax")
    ids = torch.randint(3, 64, (2, 7))
    dense = random_external(2, 7).tril()
    graph = attention_to_graph(dense, clamp=None)
    assert isinstance(graph, AttentionGraph)
    with torch.no_grad():
        a = model(ids, external_adjacency=dense).logits
        b = model(ids, external_adjacency=graph).logits
        torch.testing.assert_close(a, b)
        # incremental decoding: give the rows of the new query (or all rows)
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        first = model(ids[:, :6], external_adjacency=dense[:, :6, :6], cache=cache,
                      use_cache=True).logits
        last = model(ids[:, 6:], external_adjacency=dense, cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, last], 1), a, atol=1e-5, rtol=1e-5)
    graphs = model.attention_graphs(ids, layer=0, head=1, external_adjacency=dense)
    plain = model.attention_graphs(ids, layer=0, head=1)
    torch.testing.assert_close(graphs.to_dense(), plain.to_dense() + dense)


def test_invalid_external_adjacency():
    model = build("gin")
    ids = torch.randint(3, 64, (2, 5))
    with pytest.raises(ValueError, match="external_adjacency must have shape"):
        model(ids, external_adjacency=torch.ones(2, 4, 5))
    with pytest.raises(TypeError, match="floating point"):
        model(ids, external_adjacency=torch.ones(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        model(ids, external_adjacency=torch.full((2, 5, 5), float("nan")))
    with pytest.raises(ValueError, match="standard"):
        build("standard")(ids, external_adjacency=torch.ones(2, 5, 5))
