"""Train-step time and peak memory of GIN-/PNA-Attention vs standard (SDPA) attention.

Models (same dims, ~5M parameters): standard Llama attention (SDPA), GIN-Attention
(softmax, dense backend = SDPA with value X_h), GIN-Attention (top-k, PyG backend) and
PNA-Attention (softmax, dense backend). B=2, T in (256, 1024, 2048).

One train step = forward + backward + AdamW step on random tokens:

* time: per T one fresh process builds all models, runs 1 warm-up step each, then
  ``--repeats`` rounds of one step per model (round-robin, so changes in the shared
  machine's load hit all models alike); the median step is reported;
* memory: in another fresh process, the AdamW state is created first (one step on zero
  gradients), then the peak RSS growth of one measured step (activations, gradients,
  temporaries) with the kernel's peak counter reset first (``_measure.peak_memory_mb``).

Targets (issue 3): GIN softmax step time <= 1.5x standard at T=1024; GIN softmax peak
memory growing <= 2.5x from T=1024 to T=2048.

Usage: ``python benchmarks/gin_attention.py [--seq-lens 256 1024 2048] [--repeats 3]``
(prints a table and writes ``benchmarks/results/gin_attention.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import peak_memory_mb  # noqa: E402

MODELS = {
    "standard (SDPA)": {"attention_type": "standard"},
    "GIN softmax (dense)": {"attention_type": "gin", "adjacency_activation": "softmax",
                            "graph_backend": "dense"},
    "GIN top-k (PyG)": {"attention_type": "gin", "adjacency_activation": "top_k",
                        "adjacency_top_k": 32, "graph_backend": "pyg"},
    "PNA softmax (dense)": {"attention_type": "pna", "adjacency_activation": "softmax",
                            "graph_backend": "dense", "use_o_proj": True,
                            "value_projection": True},
}
DIMS = dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
BATCH = 2


def _build(name: str, seq_len: int):
    import torch

    from pyg_transformer import GraphLlamaConfig, GraphLlamaForCausalLM

    torch.manual_seed(0)
    config = GraphLlamaConfig(**DIMS, **MODELS[name], attn_implementation="sdpa")
    model = GraphLlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, DIMS["vocab_size"], (BATCH, seq_len))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, optimizer, step


def _memory_worker(name: str, seq_len: int) -> dict:
    import torch

    model, optimizer, step = _build(name, seq_len)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # allocate the AdamW state outside the measured step
    optimizer.zero_grad(set_to_none=True)
    return {"params": sum(p.numel() for p in model.parameters()),
            "peak_mib": peak_memory_mb(step)}


def _time_worker(names: list[str], seq_len: int, repeats: int) -> dict:
    """Round-robin over the models (one step each per round), so a change in the
    machine's background load hits every model alike."""
    steps = {name: _build(name, seq_len)[2] for name in names}
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: {"step_s": statistics.median(t), "step_s_all": t} for name, t in times.items()}


def _run(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", str(threads), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" /
                                                  "gin_attention.json"))
    args = parser.parse_args()

    rows = []
    for seq_len in args.seq_lens:
        timing = _run(["time", str(seq_len), str(args.repeats), *args.models], args.threads)
        for name in args.models:
            memory = _run(["memory", str(seq_len), name], args.threads)
            row = {"model": name, "seq_len": seq_len, "batch": BATCH, **timing[name],
                   **memory}
            rows.append(row)
            print(f"{name:22s} T={seq_len:5d} params={row['params'] / 1e6:5.2f}M "
                  f"step={row['step_s']:8.3f}s peak={row['peak_mib']:8.1f} MiB", flush=True)

    def get(model, seq_len, key):
        for row in rows:
            if row["model"] == model and row["seq_len"] == seq_len:
                return row[key]
        return None

    print()
    header = f"{'model':22s}" + "".join(f" | T={t:<5d} step (x std)  peak MiB" for t in
                                         args.seq_lens)
    print(header)
    print("-" * len(header))
    for name in args.models:
        line = f"{name:22s}"
        for t in args.seq_lens:
            ratio = get(name, t, "step_s") / get("standard (SDPA)", t, "step_s") \
                if "standard (SDPA)" in args.models else float("nan")
            line += f" | {get(name, t, 'step_s'):7.3f}s ({ratio:4.2f}x) {get(name, t, 'peak_mib'):8.1f}"
        print(line)

    targets = {}
    gin, std = "GIN softmax (dense)", "standard (SDPA)"
    if {gin, std} <= set(args.models) and 1024 in args.seq_lens:
        ratio = get(gin, 1024, "step_s") / get(std, 1024, "step_s")
        targets["gin_softmax_step_ratio_T1024"] = {"value": ratio, "target": 1.5,
                                                   "met": ratio <= 1.5}
    if gin in args.models and {1024, 2048} <= set(args.seq_lens):
        growth = get(gin, 2048, "peak_mib") / get(gin, 1024, "peak_mib")
        targets["gin_softmax_peak_growth_T1024_to_T2048"] = {"value": growth, "target": 2.5,
                                                             "met": growth <= 2.5}
    print()
    for key, value in targets.items():
        print(f"{key}: {value['value']:.2f} (target <= {value['target']}) "
              f"{'MET' if value['met'] else 'MISSED'}")

    import torch

    payload = {
        "benchmark": "gin_attention",
        "conditions": {
            "device": "cpu", "threads": args.threads, "batch": BATCH, "dims": DIMS,
            "repeats": args.repeats, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "timing": "median wall time of forward+backward+AdamW steps after 1 warm-up; "
                      "one fresh subprocess per T, models interleaved round-robin",
            "memory": "peak RSS growth (VmHWM reset via clear_refs) of one train step, fresh "
                      "subprocess, AdamW state allocated beforehand",
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "models": MODELS,
        "results": rows,
        "targets": targets,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        import torch

        torch.set_num_threads(int(sys.argv[2]))
        mode, seq_len = sys.argv[3], int(sys.argv[4])
        if mode == "memory":
            print(json.dumps(_memory_worker(sys.argv[5], seq_len)))
        else:
            print(json.dumps(_time_worker(sys.argv[6:], seq_len, int(sys.argv[5]))))
    else:
        main()
