"""PyG layers on attention graphs: WeightedGINConv, PNAConv with causal degree histograms."""

import pytest
import torch
from torch import nn
from torch_geometric.nn import GINConv, PNAConv
from torch_geometric.typing import WITH_TORCH_SPARSE
from torch_geometric.utils import dense_to_sparse, to_torch_csr_tensor

from pyg_transformer.graph import attention_to_graph, qk_to_graph
from pyg_transformer.nn import WeightedGINConv, causal_degree_histogram, degree_histogram


def mlp(channels: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(channels, 16), nn.SiLU(), nn.Linear(16, channels))


def random_graph(B=2, T=10, heads=2, d=8, **options):
    query = torch.randn(B, heads, T, d)
    key = torch.randn(B, heads, T, d)
    return qk_to_graph(query, key, scaling=d**-0.5, **options)


def pna(channels: int = 8, seq_len: int = 10, top_k=None) -> PNAConv:
    return PNAConv(channels, channels, aggregators=["sum", "mean", "max", "var"],
                   scalers=["identity", "amplification"],
                   deg=causal_degree_histogram(seq_len, top_k), edge_dim=1)


# ---------------------------------------------------------------- WeightedGINConv


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_unweighted_equals_pyg_gin(eps):
    graph = random_graph(threshold=0.1)
    x = torch.randn(graph.num_nodes, 8)
    net = mlp()
    ours = WeightedGINConv(net, eps=eps, one_plus_eps=True)
    theirs = GINConv(net, eps=eps)
    torch.testing.assert_close(ours(x, graph.edge_index), theirs(x, graph.edge_index))
    # the default eps-form is GINConv with eps shifted by one
    shifted = WeightedGINConv(net, eps=1.0 + eps)
    torch.testing.assert_close(shifted(x, graph.edge_index), theirs(x, graph.edge_index))


def test_weighted_equals_dense_formula():
    graph = random_graph(B=3, T=7, top_k=3)
    x = torch.randn(3, 7, 8)
    conv = WeightedGINConv(mlp(), eps=0.25, train_eps=True)
    out = conv(x.reshape(-1, 8), graph.edge_index, graph.edge_weight)
    expected = conv.nn(0.25 * x + graph.to_dense() @ x)
    torch.testing.assert_close(out, expected.reshape(-1, 8))
    assert isinstance(conv.eps, nn.Parameter)
    assert "one_plus_eps=False" in repr(conv)


def test_sparse_adjacency_matches_edge_index():
    graph = random_graph(threshold=0.05)
    x = torch.randn(graph.num_nodes, 8)
    conv = WeightedGINConv(mlp(), eps=0.1)
    reference = conv(x, graph.edge_index, graph.edge_weight)
    # adj_t[i, j] = weight of the edge j -> i
    adj_t = to_torch_csr_tensor(graph.edge_index.flip(0), graph.edge_weight,
                                size=(graph.num_nodes, graph.num_nodes))
    torch.testing.assert_close(conv(x, adj_t), reference)


@pytest.mark.skipif(not WITH_TORCH_SPARSE, reason="torch-sparse is not installed")
def test_torch_sparse_adjacency_matches_edge_index():
    from torch_sparse import SparseTensor

    graph = random_graph(threshold=0.05)
    x = torch.randn(graph.num_nodes, 8)
    conv = WeightedGINConv(mlp(), eps=0.1)
    adj_t = SparseTensor(row=graph.edge_index[1], col=graph.edge_index[0],
                         value=graph.edge_weight,
                         sparse_sizes=(graph.num_nodes, graph.num_nodes))
    torch.testing.assert_close(conv(x, adj_t), conv(x, graph.edge_index, graph.edge_weight))


def _perturbation_effect(conv, graph, x, k, **kwargs):
    """Per-position max change of the output of sequence 0 when node k changes."""
    base = conv(x, graph.edge_index, **kwargs)
    x2 = x.clone()
    x2[k] += torch.randn(x.size(1))
    changed = (conv(x2, graph.edge_index, **kwargs) - base).abs().amax(-1)
    return changed[: graph.seq_len]


@pytest.mark.parametrize("options", [dict(), dict(top_k=2), dict(threshold=0.15)])
def test_gin_perturbation_is_causal_and_crosses_tokens(options):
    graph = random_graph(B=2, T=12, **options)
    assert graph.num_cross_token_edges() > 0
    conv = WeightedGINConv(mlp(), eps=0.5)
    x = torch.randn(graph.num_nodes, 8)
    for k in (0, 3, 7):
        changed = _perturbation_effect(conv, graph, x, k, edge_weight=graph.edge_weight)
        assert (changed[:k] == 0).all(), f"token {k} leaked into earlier positions"
        assert changed[k] > 0
        receivers = graph.target_position[(graph.edge_index[0] == k)
                                          & (graph.edge_index[1] != k)]
        if receivers.numel():
            assert changed[k + 1 :].max() > 0, f"token {k} sent no message forward"
            assert (changed[receivers] > 0).all()


def test_reference_implementation_bug_is_not_ours():
    """dense_to_sparse gives (row=query, col=key); a causal filter row <= col on that
    layout keeps self loops only — the defect of the paper's public Sparse-GIN."""
    attn = torch.softmax(torch.randn(1, 6, 6).masked_fill(~torch.ones(6, 6).tril().bool(),
                                                            float("-inf")), -1)
    naive_index, _ = dense_to_sparse(attn[0])
    naive_causal = naive_index[:, naive_index[0] <= naive_index[1]]
    assert bool((naive_causal[0] == naive_causal[1]).all())
    ours = attention_to_graph(attn)
    assert ours.num_cross_token_edges() == 15
    assert torch.equal(ours.edge_index, naive_index.flip(0))  # (source=key, target=query)


def test_padding_left_right_give_same_real_outputs():
    T, d, heads = 9, 8, 2
    lengths = [9, 6, 3]
    conv = WeightedGINConv(mlp(d), eps=0.2)
    q_tok = [torch.randn(heads, n, d) for n in lengths]
    k_tok = [torch.randn(heads, n, d) for n in lengths]
    x_tok = [torch.randn(n, d) for n in lengths]
    outputs = {}
    for side in ("left", "right"):
        query = torch.zeros(3, heads, T, d)
        key = torch.zeros(3, heads, T, d)
        x = torch.zeros(3, T, d)
        mask = torch.zeros(3, T, dtype=torch.long)
        for b, n in enumerate(lengths):
            sl = slice(T - n, T) if side == "left" else slice(0, n)
            query[b, :, sl], key[b, :, sl], x[b, sl], mask[b, sl] = q_tok[b], k_tok[b], x_tok[b], 1
        graph = qk_to_graph(query, key, scaling=d**-0.5, attention_mask=mask, top_k=4)
        out = conv(x.reshape(-1, d), graph.edge_index, graph.edge_weight).view(3, T, d)
        outputs[side] = [out[b][mask[b].bool()] for b in range(3)]
    for left, right in zip(outputs["left"], outputs["right"]):
        torch.testing.assert_close(left, right)


def test_empty_graph_downstream():
    graph = random_graph(sharpen_alpha=10.0, sharpen_tau=5.0, threshold=0.9)
    assert graph.num_edges == 0
    x = torch.randn(graph.num_nodes, 8)
    conv = WeightedGINConv(mlp(), eps=0.5)
    torch.testing.assert_close(conv(x, graph.edge_index, graph.edge_weight), conv.nn(0.5 * x))
    out = pna()(x, graph.edge_index, graph.edge_weight.view(-1, 1))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_bfloat16():
    graph = random_graph(top_k=3).to(dtype=torch.bfloat16)
    x = torch.randn(graph.num_nodes, 8, dtype=torch.bfloat16)
    conv = WeightedGINConv(mlp(), eps=0.5).to(torch.bfloat16)
    out = conv(x, graph.edge_index, graph.edge_weight)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    reference = WeightedGINConv(mlp(), eps=0.5)
    reference.load_state_dict(conv.state_dict())
    reference = reference.float()
    expected = reference(x.float(), graph.edge_index, graph.edge_weight.float())
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)
    pna_out = pna(top_k=3).to(torch.bfloat16)(x, graph.edge_index, graph.edge_weight.view(-1, 1))
    assert pna_out.dtype == torch.bfloat16 and torch.isfinite(pna_out).all()


# ---------------------------------------------------------------- PNA


@pytest.mark.parametrize("top_k", [None, 3])
def test_pna_runs_causally_on_attention_graphs(top_k):
    graph = random_graph(B=2, T=10, top_k=top_k)
    conv = pna(top_k=top_k)
    x = torch.randn(graph.num_nodes, 8)
    edge_attr = graph.edge_weight.view(-1, 1)
    for k in (2, 6):
        changed = _perturbation_effect(conv, graph, x, k, edge_attr=edge_attr)
        assert (changed[:k] == 0).all()
        assert changed[k + 1 :].max() > 0


@pytest.mark.parametrize("top_k", [None, 1, 4])
def test_causal_degree_histogram_matches_observed(top_k):
    graph = random_graph(B=3, T=11, top_k=top_k)  # softmax > 0 everywhere: complete graph
    expected = causal_degree_histogram(11, top_k) * 3
    assert torch.equal(degree_histogram(graph), expected)
    assert torch.equal(degree_histogram([graph, graph]), 2 * expected)


def test_causal_degree_histogram_validates():
    assert causal_degree_histogram(4).tolist() == [0, 1, 1, 1, 1]
    assert causal_degree_histogram(4, top_k=2).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="seq_len"):
        causal_degree_histogram(0)
    with pytest.raises(ValueError, match="top_k"):
        causal_degree_histogram(4, top_k=0)
