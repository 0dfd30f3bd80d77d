"""Property-based tests (hypothesis) of the attention-graph invariants."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyg_transformer.graph import attention_to_graph, qk_to_graph
from pyg_transformer.nn import WeightedGINConv


@st.composite
def graph_problems(draw):
    batch_size = draw(st.integers(1, 3))
    num_kv_heads = draw(st.integers(1, 2))
    num_heads = num_kv_heads * draw(st.integers(1, 3))
    num_keys = draw(st.integers(1, 10))
    num_queries = draw(st.integers(1, num_keys))
    mask = torch.ones(batch_size, num_keys, dtype=torch.long)
    for b in range(batch_size):
        length = draw(st.integers(0, num_keys))
        if draw(st.booleans()):
            mask[b, : num_keys - length] = 0  # left padding
        else:
            mask[b, length:] = 0  # right padding
    sharpen = draw(st.booleans())
    options = dict(
        head_reduction=draw(st.sampled_from(["sum", "mean", "max"])),
        sharpen_alpha=10.0 if sharpen else None,
        sharpen_tau=0.1,
        threshold=draw(st.floats(0.0, 0.95)),
        top_k=draw(st.one_of(st.none(), st.integers(1, 5))),
        query_offset=num_keys - num_queries,
    )
    seed = draw(st.integers(0, 2**16))
    return batch_size, num_heads, num_kv_heads, num_queries, num_keys, mask, options, seed


def _probs(query, key, mask, scaling, offset):
    groups = query.size(1) // key.size(1)
    scores = query @ key.repeat_interleave(groups, 1).transpose(-1, -2) * scaling
    positions = torch.arange(offset, offset + query.size(2))
    valid = torch.arange(key.size(2))[None, :] <= positions[:, None]
    valid = valid[None, None] & mask.bool()[:, None, None, :]
    return scores.masked_fill(~valid, torch.finfo(scores.dtype).min).softmax(-1)


@settings(max_examples=60, deadline=None)
@given(graph_problems(), st.integers(1, 6))
def test_invariants_and_chunked_equality(problem, chunk_size):
    B, H, Hkv, Tq, Tk, mask, options, seed = problem
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, H, Tq, 4, generator=gen)
    key = torch.randn(B, Hkv, Tk, 4, generator=gen)
    graph = qk_to_graph(query, key, scaling=0.5, attention_mask=mask, chunk_size=chunk_size,
                        **options)
    src, dst = graph.edge_index
    # direction, locality, padding
    assert bool((src <= dst).all())
    assert torch.equal(src // Tk, dst // Tk)
    assert bool((dst % Tk >= options["query_offset"]).all())
    real = mask.reshape(-1).bool()
    assert bool(real[src].all() and real[dst].all())
    # thresholds and top-k
    assert bool((graph.edge_weight > options["threshold"]).all())
    in_degree = torch.bincount(dst, minlength=graph.num_nodes)
    if options["top_k"] is not None:
        assert int(in_degree.max()) <= options["top_k"]
    assert int(in_degree.max()) <= Tk
    # chunked construction equals the one-shot construction from probabilities
    reference = attention_to_graph(_probs(query, key, mask, 0.5, options["query_offset"]),
                                   mask, **options)
    assert torch.equal(graph.edge_index, reference.edge_index)
    torch.testing.assert_close(graph.edge_weight, reference.edge_weight, rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(graph_problems(), st.data())
def test_message_passing_never_looks_ahead(problem, data):
    B, H, Hkv, Tq, Tk, mask, options, seed = problem
    options["query_offset"] = 0
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, H, Tk, 4, generator=gen)
    key = torch.randn(B, Hkv, Tk, 4, generator=gen)
    graph = qk_to_graph(query, key, scaling=0.5, attention_mask=mask, **options)
    conv = WeightedGINConv(nn.Linear(3, 3), eps=0.5)
    x = torch.randn(graph.num_nodes, 3, generator=gen)
    node = data.draw(st.integers(0, graph.num_nodes - 1))
    x2 = x.clone()
    x2[node] += 1.0
    changed = (conv(x2, graph.edge_index, graph.edge_weight)
               - conv(x, graph.edge_index, graph.edge_weight)).abs().amax(-1) > 0
    receivers = set(graph.edge_index[1][graph.edge_index[0] == node].tolist()) | {node}
    # exactly the node itself and the targets of its out-edges change: all later, same sequence
    assert set(changed.nonzero().flatten().tolist()) <= receivers
    assert all(node <= r < (node // Tk + 1) * Tk for r in receivers)
