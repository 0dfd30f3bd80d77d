"""PNA-Attention's softmax aggregations (custom autograd function) and exact weighted max."""

import itertools
import math

import pytest
import torch
from graph_llama_helpers import tiny_config

from pyg_transformer.attention.pna_attention import (
    PNAAttention,
    _PNASoftmaxAggregations,
    _weighted_argmax,
)


def _valid(batch, num_queries, num_keys, mask):
    positions = torch.arange(num_keys - num_queries, num_keys)
    valid = torch.arange(num_keys)[None, :] <= positions[:, None]
    valid = valid[None, None].expand(batch, 1, num_queries, num_keys)
    if mask is not None:
        valid = valid & mask[:, None, None, :] & mask[:, None, positions, None]
    return valid


def _reference(query, key, features, mask):
    """Eager ``(sum, squares, degree, max)`` over the full ``[B, H, Tq, Tk]`` adjacency."""
    batch, heads, num_queries, _ = query.shape
    keys = key.repeat_interleave(heads // key.size(1), 1)
    valid = _valid(batch, num_queries, key.size(2), mask)
    probs = torch.softmax((query @ keys.transpose(-1, -2)).masked_fill(~valid, -1e300), -1)
    probs = probs.masked_fill(~valid, 0.0)
    has_key = valid.any(-1, keepdim=True)
    products = (probs[..., None] * features[:, :, None]).masked_fill(~valid[..., None],
                                                                      -math.inf)
    maximum = products.amax(3).masked_fill(~has_key, 0.0)
    degree = has_key.expand(batch, heads, num_queries, 1).to(query.dtype)
    return probs @ features, probs @ features**2, degree, maximum


def _mask(batch, num_keys, padding):
    if padding is None:
        return None
    mask = torch.ones(batch, num_keys, dtype=torch.bool)
    if padding == "left":
        mask[0, :3] = False
    else:
        mask[0, -3:] = False
    return mask


SHAPES = [(2, 4, 2, 7, 7), (2, 2, 1, 4, 9)]  # (B, H, Hkv, Tq, Tk): Tq < Tk = query offset


@pytest.mark.parametrize("shape,padding,chunk", list(itertools.product(
    SHAPES, [None, "left", "right"], [1, 3, 16])))
def test_softmax_aggregations_match_reference_and_gradcheck(shape, padding, chunk):
    batch, heads, heads_kv, num_queries, num_keys = shape
    gen = torch.Generator().manual_seed(0)
    d = 3
    query = torch.randn(batch, heads, num_queries, d, generator=gen, dtype=torch.float64)
    key = torch.randn(batch, heads_kv, num_keys, d, generator=gen, dtype=torch.float64)
    features = torch.randn(batch, heads, num_keys, d, generator=gen, dtype=torch.float64)
    inputs = tuple(x.requires_grad_() for x in (query, key, features))
    mask = _mask(batch, num_keys, padding)
    offset = num_keys - num_queries
    out = _PNASoftmaxAggregations.apply(*inputs, mask, offset, chunk, True, True)
    for got, want in zip(out, _reference(*inputs, mask)):
        torch.testing.assert_close(got, want)

    def all_aggregators(q, k, f):
        total, squares, _, maximum = _PNASoftmaxAggregations.apply(
            q, k, f, mask, offset, chunk, True, True)
        return total, squares, maximum

    def sum_only(q, k, f):
        return _PNASoftmaxAggregations.apply(q, k, f, mask, offset, chunk, False, False)[0]

    assert torch.autograd.gradcheck(all_aggregators, inputs)
    assert torch.autograd.gradcheck(sum_only, inputs)


@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("aggregators", [("sum", "mean", "max", "var"), ("mean", "var"),
                                         ("max", "sum")])
def test_pna_softmax_path_equals_checkpointed_chunks(padding, aggregators):
    """The custom function gives the values and gradients of the generic path (the
    checkpointed ``map_query_chunks``, here reached through an all-zero external
    adjacency, which adds no edge)."""
    config = tiny_config(attention_type="pna", adjacency_activation="softmax",
                         graph_backend="dense", pna_aggregators=aggregators)
    torch.manual_seed(0)
    layer = PNAAttention(config, layer_idx=0)
    batch, heads, heads_kv, tokens, d = 2, 4, 2, 11, 8
    query = torch.randn(batch, heads, tokens, d, requires_grad=True)
    key = torch.randn(batch, heads_kv, tokens, d, requires_grad=True)
    features = torch.randn(batch, heads, tokens, d, requires_grad=True)
    mask = _mask(batch, tokens, padding)
    weights = torch.randn(batch, heads, tokens, len(aggregators) * d)
    results = []
    for external in (None, torch.zeros(batch, tokens, tokens)):
        out = layer.aggregations(query, key, features, mask, external)
        grads = torch.autograd.grad((out * weights).sum(), (query, key, features))
        results.append((out, *grads))
    for fast, generic in zip(*results):
        torch.testing.assert_close(fast, generic, atol=1e-5, rtol=1e-4)


def test_weighted_argmax_with_a_sparse_keep_pattern():
    """Rows whose last kept key is earlier than a previous block's (a reused product
    buffer must not leak the earlier block's products)."""
    gen = torch.Generator().manual_seed(0)
    batch, heads, rows, num_keys, d = 1, 2, 24, 40, 5
    values = torch.rand(batch, heads, rows, num_keys, generator=gen)
    features = torch.randn(batch, heads, num_keys, d, generator=gen)
    keep = torch.rand(batch, 1, rows, num_keys, generator=gen) > 0.5
    keep[..., :8, 20:] = False
    keep[..., 8:16, 3:] = False  # the second block of 8 rows sees keys 0..2 only
    index = _weighted_argmax(values, keep, features, 0)
    products = (values[..., None] * features[:, :, None]).masked_fill(~keep[..., None],
                                                                      -math.inf)
    kept = keep.any(-1)[..., None].expand_as(index)
    torch.testing.assert_close(
        products.gather(3, index[:, :, :, None]).squeeze(3)[kept],
        products.amax(3)[kept],
    )
