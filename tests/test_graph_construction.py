"""Attention-to-graph construction: direction, causality, padding, chunking, validation."""

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from pyg_transformer.graph import AttentionGraph, attention_to_graph, qk_to_graph

RECORDING = "pyg_transformer_test_recording_eager"
_recorded: list[tuple[torch.Tensor, torch.Tensor, float]] = []


def _recording_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
    """Eager attention that also records the post-RoPE queries and keys it was given."""
    _recorded.append((query.detach().clone(), key.detach().clone(), scaling))
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kw)


AttentionInterface.register(RECORDING, _recording_eager)
AttentionMaskInterface.register(RECORDING, eager_mask)


def tiny_llama(num_heads: int, num_kv_heads: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=64,
        attn_implementation=RECORDING,
    )
    return LlamaForCausalLM(config).eval()


def eager_qk_and_probs(model, input_ids, attention_mask, prefix_len=0):
    """Post-RoPE q/k and eager probabilities of layer 0 for the last Tq = T - prefix_len
    tokens (the first prefix_len are run first and sit in the KV cache)."""
    cache = None
    if prefix_len:
        out = model(input_ids[:, :prefix_len], attention_mask=attention_mask[:, :prefix_len],
                    use_cache=True)
        cache = out.cache
    _recorded.clear()
    out = model(input_ids[:, prefix_len:], attention_mask=attention_mask,
                cache=cache, use_cache=prefix_len > 0, output_attentions=True)
    query, key, scaling = _recorded[0]
    return query, key, scaling, out.attentions[0]


def random_probs(B, H, Tq, Tk, offset=0, generator=None):
    scores = torch.randn(B, H, Tq, Tk, generator=generator)
    causal = torch.arange(Tk)[None, :] <= torch.arange(offset, offset + Tq)[:, None]
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def dense_reference(attn, mask, *, head_reduction="sum", clamp=1.0, alpha=None, tau=0.0,
                    threshold=0.0, top_k=None, offset=0):
    """The Sparse-GIN adjacency (head reduction, clamp, sharpening, threshold) written
    densely, row by row, for comparison."""
    reduce = {"sum": attn.sum(1), "mean": attn.mean(1), "max": attn.amax(1)}[head_reduction]
    A = reduce if attn.dim() == 4 else attn
    if clamp is not None:
        A = A.clamp(max=clamp)
    if alpha is not None:
        A = torch.sigmoid(alpha * (A - tau))
    B, Tq, Tk = A.shape
    out = torch.zeros(B, Tk, Tk)
    for b in range(B):
        for i in range(Tq):
            p = offset + i
            if mask is not None and not mask[b, p]:
                continue
            cols = [j for j in range(p + 1) if (mask is None or mask[b, j]) and A[b, i, j] > threshold]
            if top_k is not None and len(cols) > top_k:
                cols = sorted(cols, key=lambda j: (-A[b, i, j].item(), -j))[:top_k]
            for j in cols:
                out[b, p, j] = A[b, i, j]
    return out


def assert_graph_invariants(graph: AttentionGraph, mask=None):
    src, dst = graph.edge_index
    T = graph.seq_len
    assert graph.edge_index.dtype == torch.long
    assert graph.edge_weight.shape == (graph.num_edges,)
    assert graph.num_nodes == graph.batch_size * T == graph.batch.numel()
    assert torch.equal(src // T, dst // T), "an edge crosses two sequences"
    assert bool((src <= dst).all()), "an edge points backwards in time"
    assert bool((dst % T >= graph.query_offset).all())
    if mask is not None:
        real = mask.reshape(-1).bool()
        assert bool(real[src].all()) and bool(real[dst].all()), "a padding node has an edge"


# ---------------------------------------------------------------- direction & dense form


@pytest.mark.parametrize("head_reduction", ["sum", "mean", "max"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"threshold": 0.2},
        {"top_k": 3},
        {"alpha": 10.0, "tau": 0.1, "threshold": 0.6},
        {"alpha": 10.0, "tau": 0.1, "threshold": 0.6, "top_k": 2},
        {"clamp": None, "threshold": 0.5},
    ],
)
def test_attention_to_graph_matches_dense_formula(head_reduction, options):
    attn = random_probs(3, 4, 9, 9)
    graph = attention_to_graph(
        attn,
        head_reduction=head_reduction,
        clamp=options.get("clamp", 1.0),
        sharpen_alpha=options.get("alpha"),
        sharpen_tau=options.get("tau", 0.0),
        threshold=options.get("threshold", 0.0),
        top_k=options.get("top_k"),
    )
    assert_graph_invariants(graph)
    expected = dense_reference(attn, None, head_reduction=head_reduction,
                               clamp=options.get("clamp", 1.0), alpha=options.get("alpha"),
                               tau=options.get("tau", 0.0),
                               threshold=options.get("threshold", 0.0),
                               top_k=options.get("top_k"))
    torch.testing.assert_close(graph.to_dense(), expected, rtol=0, atol=0)
    assert graph.num_edges == int((expected > 0).sum())


def test_edges_point_from_key_to_query():
    # query 2 attends only to key 0: the edge must be 0 -> 2, i.e. (source 0, target 2)
    attn = torch.zeros(1, 3, 3)
    attn[0, 0, 0] = attn[0, 1, 1] = 1.0
    attn[0, 2, 0] = 1.0
    graph = attention_to_graph(attn)
    assert graph.edge_index.tolist() == [[0, 1, 0], [0, 1, 2]]
    assert graph.num_cross_token_edges() == 1
    assert graph.source_position.tolist() == [0, 1, 0]
    assert graph.target_position.tolist() == [0, 1, 2]


def test_upper_triangle_is_ignored():
    """Non-causal probability mass (a buggy attention) never produces an edge."""
    attn = torch.full((2, 5, 5), 0.5)
    graph = attention_to_graph(attn)
    assert_graph_invariants(graph)
    assert graph.num_edges == 2 * 15


def test_batch_offsets_and_to_pyg():
    attn = random_probs(3, 2, 6, 6)
    graph = attention_to_graph(attn, top_k=2)
    x = torch.randn(3, 6, 5)
    batch = graph.to_pyg(x)
    assert batch.num_graphs == 3
    assert torch.equal(batch.batch, graph.batch)
    assert torch.equal(batch.x, x.reshape(18, 5))
    torch.testing.assert_close(batch.edge_index, graph.edge_index)
    torch.testing.assert_close(batch.edge_weight, graph.edge_weight)
    for b, data in enumerate(batch.to_data_list()):
        assert data.num_nodes == 6
        assert bool((data.edge_index < 6).all())
        torch.testing.assert_close(data.x, x[b])
    with pytest.raises(ValueError, match="x must have shape"):
        graph.to_pyg(torch.randn(17, 5))


def test_to_moves_and_casts():
    graph = attention_to_graph(random_probs(1, 2, 4, 4))
    cast = graph.to("cpu", dtype=torch.float64)
    assert cast.edge_weight.dtype == torch.float64
    assert cast.edge_index.dtype == torch.long
    assert "AttentionGraph(num_nodes=4" in repr(cast)


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_nodes_are_isolated(side):
    B, T = 3, 8
    mask = torch.ones(B, T, dtype=torch.long)
    lengths = [8, 5, 2]
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, : T - n] = 0
        else:
            mask[b, n:] = 0
    attn = random_probs(B, 2, T, T)
    graph = attention_to_graph(attn, mask)
    assert_graph_invariants(graph, mask)
    degree = torch.zeros(B * T, dtype=torch.long)
    degree.index_add_(0, graph.edge_index[1], torch.ones(graph.num_edges, dtype=torch.long))
    assert bool((degree[mask.reshape(-1) == 0] == 0).all())
    # every real token keeps its self loop and all real earlier tokens (no threshold)
    assert graph.num_edges == sum(n * (n + 1) // 2 for n in lengths)


# ---------------------------------------------------------------- qk_to_graph vs eager


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("prefix_len", [0, 7])
def test_qk_to_graph_equals_eager_probabilities(num_heads, num_kv_heads, padding, prefix_len):
    model = tiny_llama(num_heads, num_kv_heads)
    B, T = 3, 12
    input_ids = torch.randint(0, 64, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    if padding == "left":
        mask[1, :4] = 0
        mask[2, :9] = 0
    elif padding == "right":
        mask[1, 8:] = 0
        mask[2, 3:] = 0
    with torch.no_grad():
        query, key, scaling, probs = eager_qk_and_probs(model, input_ids, mask, prefix_len)
    assert key.size(2) == T and query.size(2) == T - prefix_len
    options_list = [
        dict(),
        dict(sharpen_alpha=10.0, sharpen_tau=0.1, threshold=0.6),
        dict(top_k=3, head_reduction="max"),
        dict(threshold=0.3, top_k=2, head_reduction="mean"),
    ]
    for options in options_list:
        reference = attention_to_graph(probs, mask, query_offset=prefix_len, **options)
        assert_graph_invariants(reference, mask)
        for chunk_size in (1, 2, 5, 64):
            graph = qk_to_graph(query, key, scaling=scaling, attention_mask=mask,
                                chunk_size=chunk_size, query_offset=prefix_len, **options)
            assert torch.equal(graph.edge_index, reference.edge_index), (options, chunk_size)
            torch.testing.assert_close(graph.edge_weight, reference.edge_weight,
                                       rtol=0, atol=1e-6)
            assert graph.query_offset == prefix_len


def test_qk_to_graph_gradients_match_attention_to_graph():
    torch.manual_seed(1)
    B, H, Hkv, T, d = 2, 4, 2, 10, 8
    query = torch.randn(B, H, T, d, dtype=torch.float64, requires_grad=True)
    key = torch.randn(B, Hkv, T, d, dtype=torch.float64, requires_grad=True)
    options = dict(sharpen_alpha=5.0, sharpen_tau=0.2, threshold=0.3, top_k=4)
    graph = qk_to_graph(query, key, scaling=d**-0.5, chunk_size=3, detach=False, **options)
    weights = torch.randn(graph.num_edges, dtype=torch.float64)
    (graph.edge_weight * weights).sum().backward()
    grad_q, grad_k = query.grad.clone(), key.grad.clone()
    query.grad = key.grad = None

    scores = query @ key.repeat_interleave(H // Hkv, dim=1).transpose(-1, -2) * d**-0.5
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    reference = attention_to_graph(probs, detach=False, **options)
    assert torch.equal(reference.edge_index, graph.edge_index)
    (reference.edge_weight * weights).sum().backward()
    torch.testing.assert_close(grad_q, query.grad)
    torch.testing.assert_close(grad_k, key.grad)
    assert grad_q.abs().sum() > 0


def test_detach_blocks_gradients():
    query = torch.randn(1, 2, 5, 4, requires_grad=True)
    key = torch.randn(1, 2, 5, 4, requires_grad=True)
    assert not qk_to_graph(query, key, scaling=0.5).edge_weight.requires_grad
    attn = random_probs(1, 2, 5, 5).requires_grad_()
    assert not attention_to_graph(attn).edge_weight.requires_grad
    assert attention_to_graph(attn, detach=False).edge_weight.requires_grad


def test_bfloat16_inputs():
    query = torch.randn(2, 4, 16, 8).bfloat16()
    key = torch.randn(2, 2, 16, 8).bfloat16()
    graph = qk_to_graph(query, key, scaling=8**-0.5, top_k=4, chunk_size=5)
    assert graph.edge_weight.dtype == torch.bfloat16
    assert_graph_invariants(graph)
    assert graph.num_edges == 2 * sum(min(t + 1, 4) for t in range(16))


# ---------------------------------------------------------------- empty graphs


def test_empty_graph_is_valid():
    attn = random_probs(2, 3, 6, 6)
    graph = attention_to_graph(attn, sharpen_alpha=10.0, sharpen_tau=5.0, threshold=0.9)
    assert graph.num_edges == 0
    assert graph.edge_index.shape == (2, 0)
    assert graph.edge_weight.shape == (0,)
    assert graph.to_dense().abs().sum() == 0
    assert graph.to_pyg(torch.randn(12, 3)).num_graphs == 2
    empty_qk = qk_to_graph(torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4), scaling=0.5,
                           sharpen_alpha=10.0, sharpen_tau=5.0, threshold=0.9)
    assert empty_qk.num_edges == 0


def test_fully_padded_sequence_has_no_edges():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    graph = qk_to_graph(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), scaling=0.5,
                        attention_mask=mask)
    assert_graph_invariants(graph, mask)
    assert graph.num_edges == 10
    assert not torch.isnan(graph.edge_weight).any()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head_reduction="median"), "head_reduction"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(threshold=-0.1), "threshold"),
        (dict(sharpen_alpha=10.0, threshold=1.0), "threshold"),
        (dict(sharpen_alpha=10.0, threshold=1.5), "threshold"),
        (dict(sharpen_alpha=0.0), "sharpen_alpha"),
        (dict(clamp=0.0), "clamp"),
        (dict(query_offset=-1), "query_offset"),
        (dict(query_offset=1), "query_offset"),
        (dict(attention_mask=torch.ones(2, 5)), "attention_mask"),
        (dict(attention_mask=torch.ones(3, 6)), "attention_mask"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    attn = random_probs(2, 2, 6, 6)
    with pytest.raises(ValueError, match=match):
        attention_to_graph(attn, **kwargs)
    with pytest.raises(ValueError, match=match):
        qk_to_graph(torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4), scaling=0.5, **kwargs)


def test_invalid_shapes_raise():
    with pytest.raises(ValueError, match="attn"):
        attention_to_graph(torch.rand(6, 6))
    with pytest.raises(TypeError, match="attn"):
        attention_to_graph(torch.ones(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attn must be finite .* got nan at attn\[0, 0, 0\]"):
        attention_to_graph(torch.full((1, 3, 3), float("nan")))
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match="query"):
        qk_to_graph(q[0], q, scaling=1.0)
    with pytest.raises(ValueError, match="key"):
        qk_to_graph(q, torch.randn(1, 2, 5, 6), scaling=1.0)
    with pytest.raises(ValueError, match="multiple"):
        qk_to_graph(q, torch.randn(1, 3, 5, 8), scaling=1.0)
    with pytest.raises(ValueError, match="scaling"):
        qk_to_graph(q, q, scaling=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        qk_to_graph(q, q, scaling=1.0, chunk_size=0)


# ---------------------------------------------------------------- external adjacency


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_external_adjacency_is_added_before_sharpening(prefix_len):
    """External adjacency: A' = sigmoid(alpha (min(1, sum_h A_h + E) - tau)), causal and padding rules
    unchanged; qk_to_graph equals the definition written on eager probabilities."""
    torch.manual_seed(3)
    B, H, Hkv, T, d = 2, 4, 2, 10, 8
    Tq = T - prefix_len
    query, key = torch.randn(B, H, Tq, d), torch.randn(B, Hkv, T, d)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    external = torch.zeros(B, Tq, T)
    external[0, Tq - 1, 0] = 2.0  # a long-range causal edge 0 -> T-1
    external[0, 0, T - 1] = 2.0  # non-causal: never an edge
    external[1, Tq - 1, 1] = 2.0  # from a padding token: never an edge
    options = dict(sharpen_alpha=10.0, sharpen_tau=0.1, threshold=0.9, query_offset=prefix_len)
    scores = query @ key.repeat_interleave(H // Hkv, 1).transpose(-1, -2) * d**-0.5
    positions = torch.arange(prefix_len, T)
    valid = (torch.arange(T)[None, :] <= positions[:, None])[None, None] & mask.bool()[:, None, None]
    probs = scores.masked_fill(~valid, torch.finfo(torch.float32).min).softmax(-1)
    reference = attention_to_graph(probs.sum(1) + external, mask, **options)
    for chunk_size in (1, 3, 64):
        graph = qk_to_graph(query, key, scaling=d**-0.5, attention_mask=mask,
                            chunk_size=chunk_size, external=external, **options)
        assert torch.equal(graph.edge_index, reference.edge_index)
        torch.testing.assert_close(graph.edge_weight, reference.edge_weight, rtol=0, atol=1e-6)
        assert_graph_invariants(graph, mask)
    edges = {tuple(e): w for e, w in zip(reference.edge_index.t().tolist(),
                                         reference.edge_weight.tolist())}
    # the external weight 2 lifts the edge 0 -> T-1 to the clamp: sigmoid(10 (1 - 0.1))
    assert edges[(0, T - 1)] == pytest.approx(torch.sigmoid(torch.tensor(9.0)).item())
    assert all(src <= dst for src, dst in edges)
    with pytest.raises(ValueError, match="external must have shape"):
        qk_to_graph(query, key, scaling=0.5, external=torch.zeros(B, T, T + 1),
                    query_offset=prefix_len)


# ---------------------------------------------------------------- bad input (issue 8)


def test_qk_to_graph_rejects_non_finite_query_and_key():
    """NaN/inf in a real token's query or key raises (it used to drop edges silently);
    padding positions are never read, so garbage there is accepted."""
    B, H, T, d = 2, 2, 6, 4
    query, key = torch.randn(B, H, T, d), torch.randn(B, H, T, d)
    bad_query = query.clone()
    bad_query[0, 1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"query must be finite .* got nan at query\[0, 1, 3, 2\]"):
        qk_to_graph(bad_query, key, scaling=0.5)
    bad_key = key.clone()
    bad_key[1, 0, 2, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"key must be finite .* got -inf at key\[1, 0, 2, 0\]"):
        qk_to_graph(query, bad_key, scaling=0.5)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :2] = 0  # left padding of sequence 1
    garbage_q, garbage_k = query.clone(), key.clone()
    garbage_q[1, :, :2] = float("nan")
    garbage_k[1, :, :2] = float("inf")
    reference = qk_to_graph(query, key, scaling=0.5, attention_mask=mask)
    graph = qk_to_graph(garbage_q, garbage_k, scaling=0.5, attention_mask=mask)
    assert torch.equal(graph.edge_index, reference.edge_index)
    torch.testing.assert_close(graph.edge_weight, reference.edge_weight, rtol=0, atol=0)
    garbage_q[1, 0, 4, 0] = float("inf")  # a real token of sequence 1
    with pytest.raises(ValueError, match=r"query must be finite .* got inf at query\[1, 0, 4, 0\]"):
        qk_to_graph(garbage_q, garbage_k, scaling=0.5, attention_mask=mask)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_attention_to_graph_rejects_non_finite_attn(value):
    attn = random_probs(1, 2, 4, 4)
    attn[0, 1, 2, 1] = value
    with pytest.raises(ValueError, match=rf"attn must be finite .* got {value} at attn\[0, 1, 2, 1\]"):
        attention_to_graph(attn)
    attn = random_probs(1, 2, 4, 4)
    attn[0, 1, 1, 2] = value  # above the diagonal: never read
    assert attention_to_graph(attn).num_edges == 10


@pytest.mark.parametrize("scaling", [float("inf"), float("nan"), 0.0, -1.0])
def test_scaling_must_be_positive_finite(scaling):
    q = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=rf"scaling must be a positive finite number, got {scaling}"):
        qk_to_graph(q, q, scaling=scaling)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(clamp=float("inf")), r"clamp must be a positive finite number or None .* got inf"),
        (dict(clamp=float("nan")), r"clamp must be .* got nan"),
        (dict(sharpen_alpha=float("inf")), r"sharpen_alpha must be .* got inf"),
        (dict(sharpen_alpha=float("nan")), r"sharpen_alpha must be .* got nan"),
        (dict(sharpen_alpha=5.0, sharpen_tau=float("inf")), r"sharpen_tau must be a finite number, got inf"),
        (dict(sharpen_tau=float("-inf")), r"sharpen_tau must be a finite number, got -inf"),
        (dict(sharpen_tau=float("nan")), r"sharpen_tau must be a finite number, got nan"),
        (dict(threshold=float("inf")), r"threshold must be a finite number >= 0, got inf"),
        (dict(threshold=float("nan")), r"threshold must be a finite number >= 0, got nan"),
    ],
)
def test_non_finite_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_to_graph(random_probs(1, 2, 4, 4), **kwargs)
    with pytest.raises(ValueError, match=match):
        qk_to_graph(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), scaling=0.5, **kwargs)


@pytest.mark.parametrize("prefix_len", [0, 2])
def test_external_must_be_finite_floating_point(prefix_len):
    B, T = 2, 6
    Tq = T - prefix_len
    query, key = torch.randn(B, 2, Tq, 4), torch.randn(B, 2, T, 4)
    probs = random_probs(B, 2, Tq, T, offset=prefix_len)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 0] = 0
    build = {
        "qk_to_graph": lambda ext: qk_to_graph(query, key, scaling=0.5, attention_mask=mask,
                                               query_offset=prefix_len, external=ext),
        "attention_to_graph": lambda ext: attention_to_graph(
            probs, mask, query_offset=prefix_len, external=ext),
    }
    for name, fn in build.items():
        external = torch.zeros(B, Tq, T)
        external[0, Tq - 1, 1] = float("inf")
        with pytest.raises(ValueError, match=rf"external must be finite .* got inf at external\[0, {Tq - 1}, 1\]"):
            fn(external)
        external = torch.zeros(B, Tq, T)
        external[0, 0, T - 1] = float("nan")  # non-causal: never read
        external[1, Tq - 1, 0] = float("inf")  # from a padding token: never read
        assert fn(external).num_edges == fn(None).num_edges, name
        with pytest.raises(TypeError, match="external must be a floating point tensor, got torch.int64"):
            fn(torch.zeros(B, Tq, T, dtype=torch.long))


def test_query_key_dtypes_raise_type_error():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match=r"query.dtype=torch.float16 and key.dtype=torch.float32"):
        qk_to_graph(q.half(), q, scaling=0.5)
    with pytest.raises(TypeError, match=r"query must be a floating point tensor, got torch.int64"):
        qk_to_graph(q.long(), q, scaling=0.5)
    with pytest.raises(TypeError, match=r"key must be a floating point tensor, got torch.int32"):
        qk_to_graph(q, q.int(), scaling=0.5)


def _assert_empty(graph: AttentionGraph, batch_size: int, num_keys: int, dtype=torch.float32):
    assert graph.edge_index.shape == (2, 0) and graph.edge_index.dtype == torch.long
    assert graph.edge_weight.shape == (0,) and graph.edge_weight.dtype == dtype
    assert graph.num_nodes == batch_size * num_keys == graph.batch.numel()
    assert graph.to_dense().shape == (batch_size, num_keys, num_keys)
    assert graph.to_pyg().num_graphs == batch_size


@pytest.mark.parametrize("num_keys,offset", [(0, 0), (5, 0), (5, 5)])
def test_zero_query_rows_give_an_empty_graph(num_keys, offset):
    """T = 0 used to crash in torch.cat; now a valid graph without edges."""
    query, key = torch.randn(2, 4, 0, 8), torch.randn(2, 2, num_keys, 8)
    mask = torch.ones(2, num_keys, dtype=torch.long)
    for chunk_size in (1, 256):
        graph = qk_to_graph(query, key, scaling=0.5, attention_mask=mask, query_offset=offset,
                            chunk_size=chunk_size, top_k=2)
        _assert_empty(graph, 2, num_keys)
        assert graph.query_offset == offset
    _assert_empty(qk_to_graph(query.bfloat16(), key.bfloat16(), scaling=0.5), 2, num_keys,
                  dtype=torch.bfloat16)
    graph = attention_to_graph(torch.rand(2, 4, 0, num_keys), mask, query_offset=offset, top_k=2)
    _assert_empty(graph, 2, num_keys)
