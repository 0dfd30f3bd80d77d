"""The Quickstart page's code, runnable as it stands (``python docs/get_started/quickstart.py``);
its output is stored beside it in ``quickstart_output.txt``."""

# --- 1. an attention graph ---------------------------------------------------------------
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import pyg_transformer  # registers "graph_llama" with the Auto classes, "sparse_gin" with peft
from pyg_transformer.graph import attention_to_graph

torch.manual_seed(0)
base = LlamaForCausalLM(LlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")).eval()
input_ids = torch.randint(0, 128, (2, 12))
attention_mask = torch.ones_like(input_ids)
attention_mask[1, :4] = 0  # left padding in the second sequence

with torch.no_grad():
    out = base(input_ids, attention_mask=attention_mask, output_attentions=True,
               output_hidden_states=True)
graph = attention_to_graph(out.attentions[0], attention_mask,  # layer 0, [B, H, T, T]
                           sharpen_alpha=10.0, sharpen_tau=0.1, threshold=0.6)
data = graph.to_pyg(out.hidden_states[1])  # a torch_geometric Batch of 2 graphs
print(data)
print("edges:", graph.num_edges, "cross-token:", graph.num_cross_token_edges())
print("source <= target everywhere:", bool((data.edge_index[0] <= data.edge_index[1]).all()))

# --- 2. a GIN-Attention language model ---------------------------------------------------
from transformers import AutoModelForCausalLM

from pyg_transformer import GraphLlamaConfig

config = GraphLlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
    attention_type="gin", gin_mlp_multiplier=0.5, sharpening=True, use_o_proj=False)
model = AutoModelForCausalLM.from_config(config)
loss = model(input_ids, attention_mask=attention_mask, labels=input_ids).loss
print(type(model).__name__, f"{model.num_parameters():,} parameters, loss {loss.item():.3f}")
print("alpha per layer:", model.graph_parameters()["alpha"].tolist())
print("generated:", model.generate(input_ids[:1, :4], max_new_tokens=6, do_sample=False)[0].tolist())

# --- 3. a Sparse-GIN adapter on a frozen model -------------------------------------------
from pyg_transformer.adapters import SparseGinConfig, get_sparse_gin_model

peft_model = get_sparse_gin_model(base, SparseGinConfig(hidden_dim=32))
peft_model.print_trainable_parameters()
loss = peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
loss.backward()
print(f"loss {loss.item():.3f}; graph of layer 1:", peft_model.graph_stats()[1])
print("lambda per layer:", [round(v, 3) for v in peft_model.graph_parameters()["lambda"].tolist()])
