"""The option names and defaults shared by the library and the command line.

A leaf module: it imports nothing, so ``pyg-transformer --help`` can show every choice and
default without importing torch. :class:`~pyg_transformer.SparseGinConfig` and
:class:`~pyg_transformer.GraphLlamaConfig` take their defaults from here.
"""

#: how the heads' attention probabilities are combined into one adjacency
HEAD_REDUCTIONS = ("sum", "mean", "max")
#: how GIN-/PNA-Attention turns scores into the adjacency :math:`A'`
ADJACENCY_ACTIVATIONS = ("softmax", "sigmoid", "sharp_softplus", "relu_threshold", "top_k")
#: the Sparse-GIN adapter's GNN
GNN_TYPES = ("gin", "pna")
#: the initial :math:`\lambda_l` per adapted layer
SCALE_INITS = ("linear", "constant", "zero")

#: the defaults of :class:`~pyg_transformer.SparseGinConfig`'s own fields
SPARSE_GIN_DEFAULTS = dict(
    hidden_dim=155, num_gnn_layers=1, gnn_type="gin", head_reduction="sum", alpha=10.0,
    tau=0.1, epsilon=0.6, top_k=None, scale_init="linear", scale_max=0.5,
    trainable_scale=True, target_layers=None, detach_adjacency=True, cross_token_edges=True,
    chunk_size=256, dropout=0.0,
)

#: the defaults of :class:`~pyg_transformer.GraphLlamaConfig`'s graph-attention fields
GRAPH_DEFAULTS = dict(
    attention_type="gin", adjacency_activation="softmax", sharpening=True, sharpening_init=1.0,
    adjacency_beta=1.0, adjacency_tau=0.0, adjacency_tau_trainable=False,
    adjacency_top_k=None, gin_mlp_multiplier=0.5, gin_eps_init=0.0, use_o_proj=False, value_projection=False,
    pna_aggregators=("sum", "mean", "max", "var"), pna_blend=False, graph_backend="auto",
)
