"""Peak memory and time: ``qk_to_graph`` (chunked) vs eager probabilities + ``attention_to_graph``.

B=1, H=9, d=64 (SmolLM2-135M's attention shape), T in {1024, 2048, 4096}, two sparsity
modes: per-row top-k (k=16) and the paper's sharpen + threshold (alpha=10, tau=0.1,
epsilon=0.6). Every (method, mode, T) runs in a fresh process. Target: the peak memory of
``qk_to_graph`` grows at most ~linearly in T for fixed top-k (<= 2.5x from T=2048 to 4096)
while the eager path grows ~4x.

    python benchmarks/graph_construction.py [--seq-lens 1024 2048 4096] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import median_time_s, peak_memory_mb, run_isolated, write_results  # noqa: E402

from pyg_transformer.graph import attention_to_graph, qk_to_graph  # noqa: E402

MODES = {
    "top_k": dict(top_k=16),
    "threshold": dict(sharpen_alpha=10.0, sharpen_tau=0.1, threshold=0.6),
}
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64


def eager_graph(query, key, options):
    """Materialise the eager probabilities [B, H, T, T], then sparsify them."""
    scores = query @ key.repeat_interleave(NUM_HEADS // NUM_KV_HEADS, 1).transpose(-1, -2)
    scores = scores * HEAD_DIM**-0.5
    T = scores.size(-1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return attention_to_graph(probs, **options)


def worker(config: dict) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    T = config["seq_len"]
    query = torch.randn(1, NUM_HEADS, T, HEAD_DIM)
    key = torch.randn(1, NUM_KV_HEADS, T, HEAD_DIM)
    options = MODES[config["mode"]]
    if config["method"] == "qk_to_graph":
        def fn():
            return qk_to_graph(query, key, scaling=HEAD_DIM**-0.5,
                               chunk_size=config["chunk_size"], **options)
    else:
        def fn():
            return eager_graph(query, key, options)
    with torch.no_grad():
        peak = peak_memory_mb(fn)
        seconds = median_time_s(fn, repeats=config["repeats"])
        edges = fn().num_edges
    return {**config, "peak_mb": round(peak, 1), "time_s": round(seconds, 4), "edges": edges}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "graph_construction.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    rows = []
    print(f"{'mode':>9} {'method':>12} {'T':>5} {'edges':>7} {'peak MiB':>9} {'time s':>7}")
    for mode in MODES:
        for method in ("qk_to_graph", "eager"):
            for T in args.seq_lens:
                row = run_isolated(__file__, dict(mode=mode, method=method, seq_len=T,
                                                  chunk_size=args.chunk_size,
                                                  repeats=args.repeats, threads=args.threads))
                rows.append(row)
                print(f"{mode:>9} {method:>12} {T:>5} {row['edges']:>7} "
                      f"{row['peak_mb']:>9.1f} {row['time_s']:>7.3f}")

    def peak(mode, method, T):
        return next(r["peak_mb"] for r in rows
                    if (r["mode"], r["method"], r["seq_len"]) == (mode, method, T))

    summary = {}
    if len(args.seq_lens) >= 2:
        t1, t2 = sorted(args.seq_lens)[-2:]
        for mode in MODES:
            for method in ("qk_to_graph", "eager"):
                ratio = peak(mode, method, t2) / max(peak(mode, method, t1), 1e-9)
                summary[f"{mode}/{method}/peak_growth_{t1}_to_{t2}"] = round(ratio, 2)
            summary[f"{mode}/eager_over_qk_peak_at_{t2}"] = round(
                peak(mode, "eager", t2) / max(peak(mode, "qk_to_graph", t2), 1e-9), 1)
        key = f"top_k/qk_to_graph/peak_growth_{t1}_to_{t2}"
        summary["target_met"] = summary[key] <= 2.5
    print("\n" + "\n".join(f"{k}: {v}" for k, v in summary.items()))
    write_results(args.out, {"config": {"B": 1, "H": NUM_HEADS, "Hkv": NUM_KV_HEADS,
                                        "d": HEAD_DIM, "chunk_size": args.chunk_size,
                                        "modes": MODES},
                             "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
