"""Per-head adjacency: activation formulas, per-head graphs, batched per-head MLPs."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pyg_transformer.attention import (
    AdjacencySpec,
    HeadwiseGINMLP,
    HeadwiseLinear,
    adjacency_block,
    head_graphs,
)
from pyg_transformer.attention.adjacency import map_query_chunks, scaled_softmax_aggregate
from pyg_transformer.graph.scoring import causal_valid_mask


def _valid(batch, tq, tk, mask=None):
    positions = torch.arange(tk - tq, tk)
    return causal_valid_mask(batch, positions, tk, mask)[:, None]


def test_activation_formulas_match_spec():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 5, 5)
    valid = _valid(2, 5, 5)
    beta, tau = 2.5, 0.3
    masked = scores.masked_fill(~valid, -math.inf)
    probs = torch.softmax(masked, -1)

    values, keep = adjacency_block(scores, valid, AdjacencySpec("softmax"))
    torch.testing.assert_close(values, probs)
    assert torch.equal(keep, valid.expand_as(keep))

    values, _ = adjacency_block(scores, valid, AdjacencySpec("sigmoid", beta=beta, tau=tau))
    expected = torch.sigmoid(beta * (scores - tau)) * valid
    torch.testing.assert_close(values, expected)

    values, _ = adjacency_block(
        scores, valid, AdjacencySpec("sharp_softplus", beta=beta, tau=tau)
    )
    expected = torch.log1p(torch.exp(beta * (scores - tau))) / beta * valid
    torch.testing.assert_close(values, expected)

    values, keep = adjacency_block(scores, valid, AdjacencySpec("relu_threshold", tau=0.3))
    torch.testing.assert_close(values, F.relu(probs - 0.3))
    assert torch.equal(keep, probs > 0.3)
    assert 0 < int(keep.sum()) < int(valid.sum()) * 3  # some kept, some dropped


@pytest.mark.parametrize("k", [2, 0.5])
def test_top_k_keeps_the_largest_probabilities(k):
    torch.manual_seed(1)
    scores = torch.randn(1, 2, 6, 6)
    valid = _valid(1, 6, 6)
    values, keep = adjacency_block(scores, valid, AdjacencySpec("top_k", top_k=k))
    probs = torch.softmax(scores.masked_fill(~valid, -math.inf), -1)
    for i in range(6):
        expected_k = min(i + 1, k) if isinstance(k, int) else max(1, math.ceil(k * (i + 1)))
        kept = keep[0, :, i]
        assert (kept.sum(-1) == expected_k).all()
        # kept entries are the largest and carry the unrenormalised probability
        smallest_kept = probs[0, :, i].masked_fill(~kept, 2).amin(-1)
        largest_dropped = probs[0, :, i].masked_fill(kept | ~valid[0, 0, i], -1).amax(-1)
        assert (smallest_kept > largest_dropped).all()
    torch.testing.assert_close(values, probs * keep)


def test_padding_rows_and_columns_are_empty():
    scores = torch.randn(2, 2, 4, 4)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    valid = _valid(2, 4, 4, mask)
    for act, kwargs in [("softmax", {}), ("sigmoid", {}), ("top_k", {"top_k": 2})]:
        values, keep = adjacency_block(scores, valid, AdjacencySpec(act, **kwargs))
        assert not values[0, :, :, 0].any() and not values[0, :, 0].any()
        assert not values[1, :, :, 3].any() and not values[1, :, 3].any()
        assert torch.isfinite(values).all()


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    kv_heads=st.integers(1, 2),
    groups=st.integers(1, 2),
    tq=st.integers(1, 6),
    past=st.integers(0, 3),
    activation=st.sampled_from(["softmax", "sigmoid", "relu_threshold", "top_k"]),
    chunk=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_head_graphs_are_causal_per_head_and_match_dense(
    batch, kv_heads, groups, tq, past, activation, chunk, seed
):
    gen = torch.Generator().manual_seed(seed)
    heads, d, tk = kv_heads * groups, 4, tq + past
    query = torch.randn(batch, heads, tq, d, generator=gen)
    key = torch.randn(batch, kv_heads, tk, d, generator=gen)
    mask = torch.rand(batch, tk, generator=gen) > 0.3
    spec = AdjacencySpec(activation, tau=0.2, top_k=2)
    graph = head_graphs(query, key, spec, attention_mask=mask, query_offset=past, chunk=chunk)
    assert graph.batch_size == batch * heads and graph.num_nodes == batch * heads * tk
    src, dst = graph.edge_index
    assert (src <= dst).all() and (src // tk == dst // tk).all()  # causal, inside one graph
    assert (dst % tk >= past).all()  # only query rows receive
    b = dst // tk // heads
    assert mask[b, src % tk].all() and mask[b, dst % tk].all()  # padding isolated
    # same adjacency as the dense block, head by head
    values, _ = adjacency_block(
        torch.matmul(query, key.repeat_interleave(groups, 1).transpose(-1, -2)),
        _valid(batch, tq, tk, mask),
        spec,
    )
    dense = graph.to_dense().view(batch, heads, tk, tk)[:, :, past:]
    torch.testing.assert_close(dense, values)


def test_head_graph_weights_are_differentiable_with_chunks():
    torch.manual_seed(0)
    query = torch.randn(1, 2, 6, 4, requires_grad=True)
    key = torch.randn(1, 2, 6, 4, requires_grad=True)
    spec = AdjacencySpec("top_k", top_k=2)
    def loss(graph):  # weights each edge by its (source, target), not its position
        src, dst = graph.edge_index
        return (graph.edge_weight * (src * 31 + dst + 1).float()).sum()

    graph = head_graphs(query, key, spec, chunk=2)  # 3 checkpointed chunks
    loss(graph).backward()
    grads = [query.grad.clone(), key.grad.clone()]
    query.grad = key.grad = None
    graph = head_graphs(query, key, spec, chunk=6)
    loss(graph).backward()
    torch.testing.assert_close(query.grad, grads[0])
    torch.testing.assert_close(key.grad, grads[1])
    assert grads[0].abs().sum() > 0


def test_chunked_dense_equals_one_block():
    torch.manual_seed(0)
    query = torch.randn(2, 4, 7, 8)
    key = torch.randn(2, 2, 7, 8)
    feats = torch.randn(2, 4, 7, 8)
    spec = AdjacencySpec("sigmoid", beta=2.0, tau=0.1)
    outs = [
        torch.cat(map_query_chunks(
            lambda v, k, s: v @ feats, query, key, spec, attention_mask=None,
            query_offset=0, chunk=chunk), dim=2)
        for chunk in (1, 3, 7)
    ]
    torch.testing.assert_close(outs[0], outs[2])
    torch.testing.assert_close(outs[1], outs[2])


def test_sdpa_aggregate_equals_explicit_softmax_with_padding():
    torch.manual_seed(0)
    query = torch.randn(2, 4, 5, 8)
    key = torch.randn(2, 2, 5, 8)
    feats = torch.randn(2, 4, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    out = scaled_softmax_aggregate(query, key, feats, mask)
    values, _ = adjacency_block(
        query @ key.repeat_interleave(2, 1).transpose(-1, -2), _valid(2, 5, 5, mask),
        AdjacencySpec("softmax"),
    )
    torch.testing.assert_close(out, values @ feats)
    assert torch.isfinite(out).all()


def test_headwise_modules_equal_a_loop_over_heads():
    torch.manual_seed(0)
    lin = HeadwiseLinear(3, 4, 5)
    x = torch.randn(2, 3, 6, 4)
    loop = torch.stack([x[:, h] @ lin.weight[h] + lin.bias[h] for h in range(3)], dim=1)
    torch.testing.assert_close(lin(x), loop)
    mlp = HeadwiseGINMLP(3, 4, 2)
    y = mlp(x)
    assert y.shape == x.shape
    # heads are independent: perturbing head 0 leaves heads 1, 2 unchanged
    x2 = x.clone()
    x2[:, 0] += 1
    y2 = mlp(x2)
    assert torch.equal(y[:, 1:], y2[:, 1:]) and not torch.allclose(y[:, 0], y2[:, 0])
    assert "num_heads=3" in repr(lin)
