"""The graph core's chunked scorer and graph constructors, against direct formulas."""

import pytest
import torch

from pyg_transformer.graph import AttentionGraph, DecodeRow
from pyg_transformer.graph.scoring import causal_valid_mask, map_score_chunks


def _reference(query, key, scaling, padding, visible, offset):
    """Full ``[B, H, Tq, Tk]`` scores and the ``[B, Tq, Tk]`` valid mask, written out."""
    groups = query.size(1) // key.size(1)
    scores = query @ key.repeat_interleave(groups, dim=1).transpose(-1, -2) * scaling
    positions = torch.arange(offset, offset + query.size(2))
    valid = causal_valid_mask(query.size(0), positions, key.size(2), padding)
    if visible is not None:
        valid = valid & visible
    return scores, valid


@pytest.mark.parametrize("causal_keys", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 16])
@pytest.mark.parametrize("masks", ["none", "left", "right", "window"])
def test_chunks_equal_the_full_scores(causal_keys, chunk_size, masks):
    torch.manual_seed(0)
    B, H, Hkv, Tq, Tk, d = 2, 4, 2, 7, 10, 8
    offset = Tk - Tq
    query, key = torch.randn(B, H, Tq, d), torch.randn(B, Hkv, Tk, d)
    padding = visible = None
    if masks in ("left", "right"):
        padding = torch.ones(B, Tk, dtype=torch.bool)
        if masks == "left":
            padding[1, :3] = False
        else:
            padding[1, -2:] = False
    if masks == "window":
        keys, rows = torch.arange(Tk), torch.arange(offset, Tk)
        visible = (rows[:, None] - keys[None, :] < 4).expand(B, Tq, Tk)
    scores, valid = _reference(query, key, 0.3, padding, visible, offset)
    blocks = map_score_chunks(
        lambda s, v, start: (s, v, start), query, key, scaling=0.3, padding=padding,
        visible=visible, query_offset=offset, chunk_size=chunk_size, causal_keys=causal_keys)
    assert [start for _, _, start in blocks] == list(range(0, Tq, chunk_size))
    for block_scores, block_valid, start in blocks:
        rows = block_scores.size(2)
        width = block_scores.size(-1)
        assert width == (offset + start + rows if causal_keys else Tk)
        assert block_scores.dtype == torch.float32
        assert torch.allclose(block_scores, scores[:, :, start:start + rows, :width], atol=1e-5)
        expected = valid[:, start:start + rows, :width]
        if block_valid is None:  # documented: every pair of the block is valid
            assert bool(expected.all())
        else:
            assert torch.equal(block_valid, expected)


def test_checkpointed_chunks_give_the_same_gradients():
    torch.manual_seed(1)
    query = torch.randn(1, 2, 9, 4, requires_grad=True)
    key = torch.randn(1, 1, 9, 4, requires_grad=True)

    def loss(checkpointed):
        parts = map_score_chunks(
            lambda s, v, start: s.masked_fill(~v[:, None], -1e9).softmax(-1)[..., -1].sum()
            if v is not None else s.softmax(-1)[..., -1].sum(),
            query, key, scaling=0.5, chunk_size=4, checkpointed=checkpointed)
        return torch.stack(parts).sum()

    grads = [torch.autograd.grad(loss(c), (query, key)) for c in (False, True)]
    for plain, checkpointed in zip(*grads):
        assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_from_coo_to_dense_and_the_decode_row():
    edge_index = torch.tensor([[0, 1, 1, 3, 4, 5], [1, 1, 2, 3, 5, 5]])
    edge_weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 5.0])
    graph = AttentionGraph.from_coo(edge_index, edge_weight, batch_size=2, seq_len=3,
                                    query_offset=0)
    assert graph.num_nodes == 6 and torch.equal(graph.batch, torch.tensor([0, 0, 0, 1, 1, 1]))
    dense = graph.to_dense()
    expected = torch.zeros(2, 3, 3)
    for (src, dst), w in zip(edge_index.t().tolist(), edge_weight.tolist()):
        expected[dst // 3, dst % 3, src % 3] += w
    assert torch.equal(dense, expected)
    # the last row of each sequence as a dense decode row, and back
    last = graph.edge_index[1] % 3 == 2
    row = DecodeRow.from_coo(graph.edge_index[:, last], graph.edge_weight[last], 2, 3)
    assert torch.equal(row.weight, expected[:, 2])
    back = row.to_graph()
    assert torch.equal(back.edge_index, graph.edge_index[:, last])
    assert back.query_offset == 2

