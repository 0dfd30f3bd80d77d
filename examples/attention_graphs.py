"""Attention is a graph: a tiny random Llama's attention as PyG graphs, with GIN and PNA.

Builds a small Llama offline (random weights), takes each layer's attention
probabilities, turns them into batched causal PyG graphs, runs
:class:`~pyg_transformer.nn.WeightedGINConv` and PyG's :class:`~torch_geometric.nn.PNAConv`
on them and prints graph statistics. Runs in seconds on a CPU::

    python examples/attention_graphs.py --seq-len 32 --threshold 0.6 --top-k 8

With ``--figures DIR`` it also draws, for the first sequence and the last layer, the
head-summed adjacency before and after sharpening and thresholding (paper Fig. 15) and the
resulting causal graph (:mod:`pyg_transformer.viz`).
"""

import argparse

import torch
from torch import nn
from torch_geometric.nn import PNAConv
from transformers import LlamaConfig, LlamaForCausalLM

from pyg_transformer.graph import attention_to_graph
from pyg_transformer.nn import WeightedGINConv, causal_degree_histogram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=24)
    parser.add_argument("--alpha", type=float, default=10.0, help="sigmoid sharpening")
    parser.add_argument("--tau", type=float, default=0.1, help="sharpening offset")
    parser.add_argument("--threshold", type=float, default=0.6, help="keep A' > threshold")
    parser.add_argument("--top-k", type=int, default=None, help="keep k edges per token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figures", default=None, help="folder for the PNG figures")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, : args.seq_len // 3] = 0  # left-pad the last sequence
    with torch.no_grad():
        out = model(input_ids, attention_mask=attention_mask, output_attentions=True,
                    output_hidden_states=True)

    channels = config.hidden_size
    gin = WeightedGINConv(nn.Sequential(nn.Linear(channels, 2 * channels), nn.SiLU(),
                                        nn.Linear(2 * channels, channels)), train_eps=True)
    pna = PNAConv(channels, channels, aggregators=["sum", "mean", "max", "var"],
                  scalers=["identity", "amplification"], edge_dim=1,
                  deg=causal_degree_histogram(args.seq_len, args.top_k))

    print(f"{'layer':>5} {'nodes':>6} {'edges':>6} {'cross':>6} {'mean deg':>8} "
          f"{'mean w':>7} {'|GIN|':>7} {'|PNA|':>7}")
    for layer, attn in enumerate(out.attentions):  # [B, H, T, T] per layer
        graph = attention_to_graph(attn, attention_mask, head_reduction="sum",
                                   sharpen_alpha=args.alpha, sharpen_tau=args.tau,
                                   threshold=args.threshold, top_k=args.top_k)
        batch = graph.to_pyg(out.hidden_states[layer + 1])
        with torch.no_grad():
            h_gin = gin(batch.x, batch.edge_index, batch.edge_weight)
            h_pna = pna(batch.x, batch.edge_index, batch.edge_weight.view(-1, 1))
        real_nodes = int(attention_mask.sum())
        weight = graph.edge_weight.mean().item() if graph.num_edges else float("nan")
        print(f"{layer:>5} {graph.num_nodes:>6} {graph.num_edges:>6} "
              f"{graph.num_cross_token_edges():>6} {graph.num_edges / real_nodes:>8.2f} "
              f"{weight:>7.3f} {h_gin.norm().item():>7.2f} {h_pna.norm().item():>7.2f}")
        assert bool((graph.edge_index[0] <= graph.edge_index[1]).all())
    if args.figures:
        from pyg_transformer.viz import plot_attention_adjacency, plot_attention_graph

        stages = {  # the pipeline of the last layer, one stage at a time
            "adjacency_aggregated": attention_to_graph(attn, attention_mask),
            "adjacency_sharpened": attention_to_graph(attn, attention_mask,
                                                      sharpen_alpha=args.alpha,
                                                      sharpen_tau=args.tau),
            "adjacency_thresholded": graph,
        }
        titles = ["min(1, sum_h A_h)", f"sigmoid({args.alpha:g} (A - {args.tau:g}))",
                  f"kept: A' > {args.threshold:g}" + (f", top-{args.top_k}" if args.top_k else "")]
        for (name, stage), title in zip(stages.items(), titles):
            print("wrote", plot_attention_adjacency(stage, f"{args.figures}/{name}.png",
                                                    title=title))
        print("wrote", plot_attention_graph(graph, f"{args.figures}/attention_graph.png"))
    print(f"\n{batch}\nEvery edge points from a key j to a query i >= j: messages flow "
          "forward in time only; padding tokens are isolated nodes.")


if __name__ == "__main__":
    main()
