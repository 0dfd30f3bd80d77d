"""Sparse-GIN adapter (issue 4): graph capture, merge, cache, padding, equivalence, errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model
from pyg_transformer.graph import attention_to_graph

VOCAB = 64
DECODER_KW = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
)


def make_model(arch: str = "llama"):
    """A tiny random causal LM with a fresh config (configs are never shared)."""
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**DECODER_KW)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**DECODER_KW)).eval()
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(**DECODER_KW)).eval()
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            initializer_range=0.3, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
        )
        return GPT2LMHeadModel(config).eval()
    raise AssertionError(arch)


def clone(model):
    twin = type(model)(copy.deepcopy(model.config)).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def adapter_config(**kwargs):
    kwargs.setdefault("hidden_dim", 16)
    kwargs.setdefault("scale_init", "constant")
    return SparseGinConfig(**kwargs)


ARCHS = ["llama", "qwen2", "mistral", "gpt2"]


# --------------------------------------------------------------------------- messages
def test_messages_cross_tokens_by_perturbation():
    model = make_model("llama")
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.3))
    T, k = 12, 4
    ids = torch.randint(0, VOCAB, (1, T))
    adapted(ids)
    stats = adapted.graph_stats()
    for layer_stats in stats.values():
        assert layer_stats["edges"] > T
        assert layer_stats["cross_token_edges"] > 0
    layer = adapted.adapter_layers[0]
    graph = layer.last_graph
    src, dst = graph.edge_index
    assert bool((src <= dst).all())
    x = torch.randn(1, T, 32)
    with torch.no_grad():
        base_out = layer(x, graph)
        x2 = x.clone()
        x2[0, k] += torch.randn(32)
        changed = (layer(x2, graph) - base_out).abs().amax(-1)[0] > 0
    assert not changed[:k].any()
    receivers = set(dst[src == k].tolist()) | {k}
    assert set(changed.nonzero().flatten().tolist()) == receivers
    assert any(i > k for i in receivers)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_scale_equals_base_and_disable_unload_restore(arch):
    model = make_model(arch)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        reference = model(ids).logits
    zero = get_sparse_gin_model(model, adapter_config(scale_init="zero", epsilon=0.3))
    assert zero.config is model.config and zero.get_base_model() is model
    with torch.no_grad():
        assert torch.equal(zero(ids).logits, reference)
    assert zero.graph_stats()[0]["edges"] > 9
    model = zero.unload()
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.3))
    with torch.no_grad():
        assert not torch.allclose(adapted(ids).logits, reference)
        with adapted.disable_adapter():
            assert torch.equal(adapted(ids).logits, reference)
        assert not torch.allclose(adapted(ids).logits, reference)
    base = adapted.unload()
    assert base is model
    assert base.config._attn_implementation == "sdpa"
    assert "peft_config" not in base.__dict__
    assert not base._forward_hooks and not base._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(base(ids).logits, reference)


def test_only_adapter_parameters_train():
    model = make_model("llama")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.3))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".sparse_gin.sparse_gin_" in n for n in trainable)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".sparse_gin." not in n)
    ids = torch.randint(0, VOCAB, (2, 8))
    adapted(ids, labels=ids).loss.backward()
    for name, param in adapted.named_parameters():
        if name in trainable:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    adapted.unload()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_graph_parameters_and_scale_init():
    model = LlamaForCausalLM(LlamaConfig(**{**DECODER_KW, "num_hidden_layers": 3})).eval()
    adapted = get_sparse_gin_model(
        model, SparseGinConfig(hidden_dim=8, num_gnn_layers=2, scale_max=0.4, trainable_scale=False)
    )
    params = adapted.graph_parameters()
    assert torch.allclose(params["lambda"], torch.tensor([0.0, 0.2, 0.4]))
    assert params["eps"].shape == (3, 2)
    assert not any(p.requires_grad for n, p in adapted.named_parameters() if "lambda" in n)
    adapted.unload()
    subset = get_sparse_gin_model(model, SparseGinConfig(hidden_dim=8, target_layers=[2, 0]))
    assert list(subset.adapter_layers) == [0, 2]
    assert subset.graph_parameters()["lambda"].shape == (2,)


# --------------------------------------------------------------------------- cache
def _stepwise_logits(adapted, ids, attention_mask=None, prefill=5):
    mask = None if attention_mask is None else attention_mask[:, :prefill]
    out = adapted(ids[:, :prefill], attention_mask=mask, use_cache=True)
    logits, cache = [out.logits], out.cache
    for t in range(prefill, ids.size(1)):
        mask = None if attention_mask is None else attention_mask[:, : t + 1]
        out = adapted(ids[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = out.cache
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("gnn_type", ["gin", "pna"])
def test_kv_cache_generation_equals_no_cache(arch, gnn_type):
    model = make_model(arch)
    adapted = get_sparse_gin_model(
        model, adapter_config(epsilon=0.5, gnn_type=gnn_type, num_gnn_layers=2)
    )
    ids = torch.randint(0, VOCAB - 1, (2, 11))
    with torch.no_grad():
        full = adapted(ids).logits
        assert torch.allclose(_stepwise_logits(adapted, ids), full, atol=1e-5)
        with adapted.disable_adapter():
            assert not torch.allclose(model(ids).logits, full, atol=1e-3)
    for prompt in (ids[:1, :6], ids[1:, :4]):  # two calls: the adapter cache resets
        cached = adapted.generate(prompt, max_new_tokens=12, do_sample=False)
        uncached = adapted.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
    with adapted.disable_adapter():
        plain = adapted.generate(ids[:1, :6], max_new_tokens=12, do_sample=False)
    assert not torch.equal(plain, adapted.generate(ids[:1, :6], max_new_tokens=12, do_sample=False))


def test_kv_cache_left_padded_batch_generation():
    model = make_model("llama")
    adapted = get_sparse_gin_model(model, adapter_config(epsilon=0.5))
    ids = torch.randint(0, VOCAB - 1, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = adapted.generate(ids, **kwargs)
    uncached = adapted.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_cache_without_node_features_is_rejected():
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config())
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        with adapted.disable_adapter():  # the base model fills the KV cache
            cache = adapted(ids, use_cache=True).cache
        adapted(ids)  # a forward without that cache in between changes nothing
        with pytest.raises(RuntimeError, match=r"the KV cache holds positions 0..5 but the "
                                               r"adapter has node features for none"):
            adapted(ids[:, :1], cache=cache, use_cache=True)


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_padding_invariance_batch_and_sequence_of_one(arch):
    adapted = get_sparse_gin_model(make_model(arch), adapter_config(epsilon=0.4))
    T, pad = 6, 3
    ids = torch.randint(1, VOCAB, (1, T))
    with torch.no_grad():
        alone = adapted(ids).logits[0]
        edges_alone = {k: v["edges"] for k, v in adapted.graph_stats().items()}
        for side in ("left", "right"):
            filler = torch.zeros(1, pad, dtype=torch.long)
            other = torch.randint(1, VOCAB, (1, T + pad))
            if side == "left":
                row, mask = torch.cat([filler, ids], 1), torch.cat([torch.zeros(1, pad), torch.ones(1, T)], 1)
            else:
                row, mask = torch.cat([ids, filler], 1), torch.cat([torch.ones(1, T), torch.zeros(1, pad)], 1)
            batch = torch.cat([row, other])
            attention_mask = torch.cat([mask, torch.ones(1, T + pad)]).long()
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = adapted(batch, attention_mask=attention_mask, position_ids=position_ids).logits
            real = attention_mask[0].bool()
            assert torch.allclose(logits[0, real], alone, atol=1e-5), side
            graph = adapted.adapter_layers[0].last_graph
            src, dst = graph.edge_index
            padded = (~attention_mask.bool()).flatten().nonzero().flatten()
            assert not torch.isin(src, padded).any() and not torch.isin(dst, padded).any()
            assert int((dst < T + pad).sum()) == edges_alone[0]
        one = adapted(ids[:, :1]).logits
        assert one.shape == (1, 1, VOCAB) and torch.allclose(one[0], alone[:1], atol=1e-5)
        assert adapted.graph_stats()[0]["edges"] <= 1


def test_empty_graphs():
    adapted = get_sparse_gin_model(
        make_model("llama"), adapter_config(alpha=1e-3, tau=0.0, epsilon=0.99)
    )
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        logits = adapted(ids).logits
    assert torch.isfinite(logits).all()
    assert all(s["edges"] == 0 and s["mean_degree"] == 0 for s in adapted.graph_stats().values())
    layer = adapted.adapter_layers[1]
    x = torch.randn(2, 7, 32)
    x2 = x.clone()
    x2[0, 2] += 1
    with torch.no_grad():
        diff = (layer(x2, layer.last_graph) - layer(x, layer.last_graph)).abs().amax(-1)
    assert diff[0, 2] > 0 and diff.count_nonzero() == 1  # no messages: only the token itself
    loss = adapted(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------- equivalence
def _reference_logits(eager, adapted, ids, attention_mask, config):
    """The adapter's math from the eager model's attention probabilities and plain torch ops."""
    inner = eager.model
    B, T = ids.shape
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    h = inner.embed_tokens(ids)
    rotary = inner.rotary_emb(h, positions)
    keys_ok = attention_mask.bool()[:, None, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    additive = torch.zeros(B, 1, T, T).masked_fill(~(causal & keys_ok), torch.finfo(torch.float32).min)
    for idx, layer in enumerate(inner.layers):
        attn_out, probs = layer.self_attn(
            layer.input_layernorm(h), position_embeddings=rotary, attention_mask=additive
        )
        x = h + attn_out
        graph = attention_to_graph(
            probs, attention_mask, head_reduction=config.head_reduction, clamp=1.0,
            sharpen_alpha=config.alpha, sharpen_tau=config.tau, threshold=config.epsilon,
            top_k=config.top_k,
        )
        adjacency = graph.to_dense()  # [B, T, T], A[b, i, j] = w_{j -> i}
        gnn = adapted.adapter_layers[idx].sparse_gin_gnn["default"]
        lam = adapted.adapter_layers[idx].sparse_gin_lambda["default"]
        z = F.linear(x, gnn.lin_in.weight, gnn.lin_in.bias)
        for conv, res in zip(gnn.convs, gnn.lins_res):
            lin1, norm, _, _, lin2 = conv.nn
            agg = conv.eps * z + adjacency @ z
            hidden = F.relu(F.layer_norm(F.linear(agg, lin1.weight, lin1.bias), (agg.size(-1),),
                                         norm.weight, norm.bias, norm.eps))
            z = F.linear(hidden, lin2.weight, lin2.bias) + F.linear(z, res.weight, res.bias)
        y = F.linear(z, gnn.lin_out.weight, gnn.lin_out.bias)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * gnn.norm.weight
        x = x + lam * y
        h = x + layer.mlp(layer.post_attention_layernorm(x))
    return eager.lm_head(inner.norm(h))


@pytest.mark.parametrize("options", [
    dict(epsilon=0.5, head_reduction="sum", num_gnn_layers=2),
    dict(epsilon=0.2, head_reduction="max", top_k=3, chunk_size=3),
])
def test_capture_path_equals_eager_reference(options):
    model = make_model("llama")
    eager = clone(model)
    eager.set_attn_implementation("eager")
    config = adapter_config(**options)
    adapted = get_sparse_gin_model(model, config)
    with torch.no_grad():  # non-trivial GIN eps
        for layer in adapted.adapter_layers.values():
            for conv in layer.sparse_gin_gnn["default"].convs:
                conv.eps.fill_(0.3)
    ids = torch.randint(0, VOCAB, (2, 10))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = adapted(ids, attention_mask=attention_mask, position_ids=positions).logits
        reference = _reference_logits(eager, adapted, ids, attention_mask, config)
        with adapted.disable_adapter():
            base = adapted(ids, attention_mask=attention_mask, position_ids=positions).logits
    real = attention_mask.bool()
    assert (reference[real] - base[real]).abs().max() > 1e-2  # the adapter matters
    assert torch.allclose(logits[real], reference[real], atol=1e-5)


# --------------------------------------------------------------------------- external
def test_external_adjacency_adds_edges_and_checks_shape():
    adapted = get_sparse_gin_model(
        make_model("llama"), adapter_config(epsilon=0.9, head_reduction="mean")
    )
    B, T = 2, 8
    ids = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        adapted(ids)
        before = adapted.adapter_layers[0].last_graph
        pairs = set(zip(*before.edge_index.tolist()))
        missing = [(j, i) for i in range(T) for j in range(i) if (j, i) not in pairs]
        assert missing  # some causal pair of sequence 0 is not an attention edge
        j, i = missing[0]
        external = torch.zeros(B, T, T)
        external[0, i, j] = 1.0  # edge j -> i in sequence 0
        external[0, j, i] = 1.0  # non-causal: ignored
        adapted(ids, external_adjacency=external)
        dense_pairs = set(zip(*adapted.adapter_layers[0].last_graph.edge_index.tolist()))
        assert dense_pairs == pairs | {(j, i)}
        coo = (torch.tensor([[j], [i]]), torch.tensor([1.0]))
        logits_coo = adapted(ids, external_adjacency=coo).logits
        assert set(zip(*adapted.adapter_layers[0].last_graph.edge_index.tolist())) == dense_pairs
        external[0, j, i] = 0.0
        assert torch.allclose(adapted(ids, external_adjacency=external).logits, logits_coo)
        with pytest.raises(ValueError, match="external_adjacency must have shape"):
            adapted(ids, external_adjacency=torch.zeros(B, T, T + 1))
        with pytest.raises(ValueError, match="edge_index must have shape"):
            adapted(ids, external_adjacency=(torch.zeros(3, 1, dtype=torch.long), torch.ones(1)))
        with pytest.raises(ValueError, match="within one sequence"):
            adapted(ids, external_adjacency=(torch.tensor([[0], [9]]), torch.ones(1)))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field,value", [
    ("hidden_dim", 0), ("hidden_dim", 2.5), ("num_gnn_layers", 0), ("gnn_type", "gat"),
    ("head_reduction", "median"), ("alpha", 0.0), ("alpha", float("inf")), ("tau", float("nan")),
    ("epsilon", 1.0), ("epsilon", -0.1), ("top_k", 0), ("scale_init", "random"),
    ("scale_max", float("inf")), ("trainable_scale", 1), ("target_layers", []),
    ("target_layers", [-1]), ("detach_adjacency", "yes"), ("chunk_size", 0), ("dropout", 1.0),
])
def test_invalid_config_values(field, value):
    with pytest.raises(ValueError, match=field):
        SparseGinConfig(**{field: value})


def test_target_layer_out_of_range():
    with pytest.raises(ValueError, match="target_layers"):
        get_sparse_gin_model(make_model("llama"), SparseGinConfig(target_layers=[5]))


class _NoInterfaceAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = _NoInterfaceAttention()

    def forward(self, hidden_states):
        residual = hidden_states
        hidden_states = self.self_attn(hidden_states)
        return residual + hidden_states


class _TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block()])


def test_unsupported_models_raise():
    with pytest.raises(ValueError, match="no decoder layers"):
        get_sparse_gin_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), SparseGinConfig())
    with pytest.raises(ValueError, match="AttentionInterface"):
        get_sparse_gin_model(_TinyLM(), SparseGinConfig())
    from transformers import Gemma2Config, Gemma2ForCausalLM  # norm between attention and residual

    gemma = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    ))
    with pytest.raises(ValueError, match=r"model type 'gemma2' \(Gemma2ForCausalLM\): "
                                         r"supported are .*llama.*straight to the layer input"):
        get_sparse_gin_model(gemma, SparseGinConfig())
    assert gemma.config._attn_implementation != "sparse_gin"
    with pytest.raises(TypeError, match="SparseGinConfig"):
        get_sparse_gin_model(make_model("llama"), {"hidden_dim": 4})


def test_4d_mask_equals_the_padding_mask():
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config(epsilon=0.3))
    ids = torch.randint(0, VOCAB, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    mask_4d = (causal[None] & mask.bool()[:, None, :])[:, None]
    with torch.no_grad():
        expected = adapted(ids, attention_mask=mask).logits
        out = adapted(ids, attention_mask=mask_4d).logits
    assert torch.allclose(out[1], expected[1], atol=1e-6)
    assert torch.allclose(out[0, 2:], expected[0, 2:], atol=1e-6)


def test_second_adapter_on_one_base_is_refused_and_first_keeps_working():
    """A second get_sparse_gin_model / peft.get_peft_model on an adapted base used to
    succeed and break both wrappers; now it is refused and the first is untouched."""
    import peft

    model = make_model("llama")
    first = get_sparse_gin_model(model, adapter_config(epsilon=0.3))
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        before = first(ids).logits
    match = (r"this model already carries Sparse-GIN adapters \['default'\]; add "
             r"another one to its PeftModel with peft_model.add_adapter\(name, ")
    with pytest.raises(ValueError, match=match):
        get_sparse_gin_model(model, adapter_config())
    with pytest.raises(ValueError, match=match):
        get_sparse_gin_model(first, adapter_config())  # the wrapper itself
    with pytest.raises(ValueError, match=match):
        peft.get_peft_model(model, adapter_config())
    assert "peft_config" in model.__dict__ and model.peft_config is first.peft_config
    with torch.no_grad():
        assert torch.equal(first(ids).logits, before)
    first.train()
    first(ids, labels=ids).loss.backward()
    grads = [p.grad for p in first.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    base = first.unload()
    second = get_sparse_gin_model(base, adapter_config())  # a proper second adapter
    assert second.graph_stats() == {} and second(ids).logits.shape == before.shape


def test_unload_twice_raises():
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config())
    base = adapted.unload()
    with pytest.raises(ValueError, match=r"already unloaded: unload\(\) returned the base "
                                         r"LlamaForCausalLM"):
        adapted.unload()
    assert not base._forward_hooks and base.config._attn_implementation == "sdpa"


def test_cropped_cache_and_beam_search():
    adapted = get_sparse_gin_model(make_model("llama"), adapter_config(epsilon=0.5))
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        full = adapted(ids).logits
        cache = adapted(ids[:, :8], use_cache=True).cache
        cache.crop(-2)  # e.g. assisted decoding rejecting drafted tokens
        out = adapted(ids[:, 6:10], cache=cache, use_cache=True).logits
    assert torch.allclose(out, full[:, 6:10], atol=1e-5)
    # beam search reorders the adapter's node features with the KV cache
    beams = dict(num_beams=3, num_return_sequences=3, max_new_tokens=6, do_sample=False)
    assert torch.equal(adapted.generate(ids, **beams), adapted.generate(ids, use_cache=False,
                                                                        **beams))


@pytest.mark.parametrize("top_k", [None, 3])
def test_decode_row_graph_equals_qk_to_graph(top_k):
    from pyg_transformer.graph import DecodeRow, decode_row_graph, qk_to_graph

    query, key = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 45, 8)
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[0, :5] = False
    options = dict(head_reduction="sum", clamp=1.0, sharpen_alpha=10.0, sharpen_tau=0.1,
                   threshold=0.5, top_k=top_k)
    expected = qk_to_graph(query, key, scaling=0.3, attention_mask=mask, query_offset=44,
                           **options)
    graph = decode_row_graph(query, key, scaling=0.3, padding=mask, **options)
    assert isinstance(graph, DecodeRow) == (top_k is None)
    if top_k is None:
        assert graph.weight.shape == (2, 45)
        graph = graph.to_graph()
    assert 0 < graph.num_edges < 2 * 45 - 5
    assert torch.equal(graph.edge_index, expected.edge_index)
    assert torch.equal(graph.batch, expected.batch)
    assert (graph.num_nodes, graph.seq_len, graph.query_offset) == (90, 45, 44)
    assert torch.allclose(graph.edge_weight, expected.edge_weight, atol=1e-6)


def test_gnn_decode_step_equals_full_graph_and_follows_new_weights():
    from pyg_transformer.adapters.sparse_gin.layer import SparseGinGNN

    torch.manual_seed(0)
    gnn = SparseGinGNN(16, 8, num_layers=2).eval()
    B, T = 2, 6
    x = torch.randn(B, T, 16)
    # edges into every position from a random causal subset, flat ids b * T + t
    src, dst = [], []
    for b in range(B):
        for i in range(T):
            for j in range(i + 1):
                if j == i or torch.rand(()) < 0.5:
                    src.append(b * T + j)
                    dst.append(b * T + i)
    edge_index = torch.tensor([src, dst])
    edge_weight = torch.rand(edge_index.size(1))
    last = edge_index[1] % T == T - 1
    rows = torch.zeros(B * T).index_put_((edge_index[0, last],), edge_weight[last])
    with torch.no_grad():
        for _ in range(2):
            full, feats = gnn(x, edge_index, edge_weight)
            buffers = [torch.cat([f[:, :T - 1], torch.zeros(B, 1, 8)], 1) for f in feats]
            step = gnn._decode_step(x[:, -1:], rows.view(B, 1, T), buffers)
            assert torch.allclose(step, full[:, -1:], atol=1e-5)
            for buf, f in zip(buffers, feats):
                assert torch.allclose(buf, f, atol=1e-6)  # the new token's features cached
            # weights replaced (not copied into): the decode step must read the new ones
            state = {k: torch.randn_like(v) for k, v in gnn.state_dict().items()}
            gnn.load_state_dict(state, assign=True)
        gnn.double()
        full, feats = gnn(x.double(), edge_index, edge_weight.double())
        buffers = [torch.cat([f[:, :T - 1], torch.zeros_like(f[:, :1])], 1) for f in feats]
        step = gnn._decode_step(x[:, -1:].double(), rows.view(B, 1, T).double(), buffers)
        assert step.dtype == torch.float64 and torch.allclose(step, full[:, -1:], atol=1e-10)


def test_decode_step_keeps_graph_stats():
    from pyg_transformer.adapters.sparse_gin.layer import feature_cache

    adapted = get_sparse_gin_model(make_model("llama"), adapter_config(epsilon=0.4))
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        adapted(ids)
        full = adapted.adapter_layers[0].last_graph
        cache = adapted(ids[:, :8], use_cache=True).cache
        adapted(ids[:, 8:], cache=cache, use_cache=True)
    layer = adapted.adapter_layers[0]
    graph = layer.last_graph  # built from the decode step's dense row on request
    assert (graph.num_nodes, graph.seq_len, graph.query_offset) == (9, 9, 8)
    store = feature_cache(cache, 0, "default")  # the node features travel with the KV cache
    assert (store.start, store.length) == (0, 9) and store.buffers[0].size(0) == 1
    last_row = full.edge_index[1] == 8
    assert torch.equal(graph.edge_index, full.edge_index[:, last_row])
    assert torch.allclose(graph.edge_weight, full.edge_weight[last_row], atol=1e-6)
    stats = adapted.graph_stats()[0]
    assert stats["edges"] == graph.num_edges and stats["mean_degree"] == graph.num_edges


# --------------------------------------------------------------------------- ablation
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_no_cross_token_edges_passes_no_message(arch):
    """On a content-blind base model (uniform attention that adds nothing to the residual,
    so each position depends on its own token only), perturbing token k changes later
    positions only through the adapter's messages: not at all with
    ``cross_token_edges=False``, and with the default."""
    model = make_model(arch)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".self_attn." in name or ".attn." in name:  # q = k = 0: uniform; output 0
                param.zero_()
    T, k = 10, 3
    ids = torch.randint(0, VOCAB, (1, T))
    other = ids.clone()
    other[0, k] = (other[0, k] + 1) % VOCAB
    counts, changes = {}, {}
    for cross in (True, False):
        adapted = get_sparse_gin_model(clone(model), adapter_config(epsilon=0.3,
                                                                    cross_token_edges=cross))
        with torch.no_grad():
            a, b = adapted(input_ids=ids).logits, adapted(input_ids=other).logits
            stats = adapted.base_model.graph_stats()
        counts[cross] = adapted.get_nb_trainable_parameters()[0]
        changes[cross] = (a - b).abs()[0].amax(dim=-1)
        assert torch.equal(changes[cross][:k], torch.zeros(k))  # causality either way
        assert all(s["cross_token_edges"] == 0 for s in stats.values()) == (not cross)
    assert counts[True] == counts[False]
    assert float(changes[True][k + 1:].min()) > 1e-4  # messages carry the change forward
    assert torch.equal(changes[False][k + 1:], torch.zeros(T - k - 1))  # and nothing else
