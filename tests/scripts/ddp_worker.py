"""Run under torchrun: train a Sparse-GIN adapter and a GIN-Attention model with DDP (gloo,
CPU) for a few steps through transformers.Trainer; each rank saves its trainable parameters
(initial and final) to OUT/<arm>-rank<r>.safetensors for the test to compare."""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from pyg_transformer import GraphLlamaConfig, GraphLlamaForCausalLM
from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model


def trainable_state(model):
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters()
            if p.requires_grad}


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12, vocab=64):
        gen = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(0, vocab, (n, length), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(name, model, out_dir):
    rank = int(os.environ["RANK"])
    before = trainable_state(model)
    args = TrainingArguments(output_dir=os.path.join(out_dir, name), max_steps=3,
                             per_device_train_batch_size=2, learning_rate=1e-2,
                             lr_scheduler_type="constant", report_to=[], save_strategy="no",
                             use_cpu=True, ddp_backend="gloo", seed=0,
                             label_names=["labels"], logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens())
    trainer.train()
    assert trainer.args.world_size == 2, trainer.args.world_size
    after = trainable_state(model)
    tensors = {f"before.{k}": v for k, v in before.items()}
    tensors.update({f"after.{k}": v for k, v in after.items()})
    save_file(tensors, os.path.join(out_dir, f"{name}-rank{rank}.safetensors"))


def main(out_dir):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2))
    train("sparse_gin", get_sparse_gin_model(base, SparseGinConfig(hidden_dim=16, epsilon=0.3)),
          out_dir)
    torch.manual_seed(0)
    gin = GraphLlamaForCausalLM(GraphLlamaConfig(vocab_size=64, hidden_size=32,
                                                 intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2,
                                                 attention_type="gin"))
    train("gin_attention", gin, out_dir)


if __name__ == "__main__":
    main(sys.argv[1])
    # tear gloo down before the interpreter exits: its threads otherwise outlive the
    # process group and abort one rank at exit now and then ("terminate called ...")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
