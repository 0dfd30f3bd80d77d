"""GIN-/PNA-Attention Llama: transformers' Llama with graph attention.

Everything but the attention module is transformers' Llama (embeddings, RoPE, RMSNorm,
MLP, decoder layer, LM head, generation). ``attention_type="standard"`` keeps
:class:`~transformers.models.llama.modeling_llama.LlamaAttention`.

The three ``__init__`` methods run transformers' own ``LlamaDecoderLayer.__init__``,
``LlamaModel.__init__`` and ``LlamaForCausalLM.__init__`` (see :func:`~pyg_transformer.compat.reuse_init`): the
bodies are reused, not copied, and no Llama module is built only to be replaced.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)

from pyg_transformer.attention import GINAttention, PNAAttention
from pyg_transformer.attention.base import GraphAttentionBase
from pyg_transformer.attention.headwise import HeadwiseLinear, HeadwiseRMSNorm
from pyg_transformer.compat import capture_outputs, merge_with_config_defaults, reuse_init
from pyg_transformer.graph import AttentionGraph
from pyg_transformer.models.graph_llama.configuration_graph_llama import GraphLlamaConfig

GRAPH_ATTENTION_CLASSES = {"gin": GINAttention, "pna": PNAAttention}


def _self_attention(config: GraphLlamaConfig, layer_idx: int) -> nn.Module:
    """The decoder layer's ``self_attn``: GIN-/PNA-Attention, or Llama's attention."""
    attention = GRAPH_ATTENTION_CLASSES.get(config.attention_type, modeling_llama.LlamaAttention)
    return attention(config=config, layer_idx=layer_idx)


_decoder_layer_init = reuse_init(LlamaDecoderLayer, LlamaAttention=_self_attention)


class GraphLlamaDecoderLayer(LlamaDecoderLayer):
    """:class:`~transformers.models.llama.modeling_llama.LlamaDecoderLayer` whose
    ``self_attn`` is :class:`~pyg_transformer.attention.GINAttention` or
    :class:`~pyg_transformer.attention.PNAAttention` (``LlamaAttention`` for
    ``attention_type="standard"``).

    ``__init__`` is ``LlamaDecoderLayer.__init__`` building that attention in place of
    ``LlamaAttention`` (see :func:`~pyg_transformer.compat.reuse_init`)."""

    def __init__(self, config: GraphLlamaConfig, layer_idx: int):
        _decoder_layer_init(self, config, layer_idx)


class GraphLlamaPreTrainedModel(LlamaPreTrainedModel):
    """Weight initialisation and introspection shared by the GraphLlama models."""

    config: GraphLlamaConfig
    config_class = GraphLlamaConfig
    _no_split_modules = ["GraphLlamaDecoderLayer"]
    _can_compile_fullgraph = False
    _can_record_outputs = {
        "hidden_states": GraphLlamaDecoderLayer,
        "attentions": LlamaAttention,
    }

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, HeadwiseLinear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, HeadwiseRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, GraphAttentionBase):
            if module.log_alpha is not None:
                init.constant_(module.log_alpha, math.log(self.config.sharpening_init))
            if isinstance(module.tau, nn.Parameter):
                init.constant_(module.tau, float(self.config.adjacency_tau))
            if isinstance(module, GINAttention):
                init.constant_(module.eps, float(self.config.gin_eps_init))
            if isinstance(module, PNAAttention) and module.blend_logit is not None:
                init.zeros_(module.blend_logit)

    def _graph_attentions(self) -> list[GraphAttentionBase]:
        return [m for m in self.modules() if isinstance(m, GraphAttentionBase)]

    def graph_parameters(self) -> dict[str, Tensor]:
        r"""The learned graph scalars, detached on CPU, dim 0 = layer.

        ``{"alpha": [L], "eps": [L, H]}`` for GIN-Attention; ``{"alpha": [L]}`` (+
        ``"pna_lambda": [L]`` with ``pna_blend``) for PNA-Attention; ``"tau": [L]`` when
        ``adjacency_tau_trainable``; ``{}`` for ``attention_type="standard"``.
        """
        attentions = self._graph_attentions()
        if not attentions:
            return {}
        out = {"alpha": torch.stack([a.alpha.detach().float().cpu() for a in attentions])}
        if self.config.attention_type == "gin":
            out["eps"] = torch.stack([a.eps.detach().float().cpu() for a in attentions])
        if self.config.attention_type == "pna" and self.config.pna_blend:
            out["pna_lambda"] = torch.stack([a.blend.detach().float().cpu() for a in attentions])
        if self.config.adjacency_tau_trainable:
            out["tau"] = torch.stack([a.tau.detach().float().cpu() for a in attentions])
        return out

    @torch.no_grad()
    def attention_graphs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        layer: int | None = None,
        head: int | None = None,
        external_adjacency: Tensor | AttentionGraph | None = None,
    ) -> AttentionGraph | list[AttentionGraph] | list[list[AttentionGraph]]:
        r"""The adjacency :math:`A'_{l,h}` that each layer/head uses for ``input_ids``.

        Runs one forward pass (no cache) and rebuilds each requested layer's graphs from
        its input, exactly as the layer's ``pyg`` backend does.

        Args:
            input_ids: ``[B, T]`` token ids.
            attention_mask: ``[B, T]``, 1 for real tokens (padding nodes are isolated).
            layer: a layer index, or ``None`` for all layers.
            head: a head index, or ``None`` for all heads.
            external_adjacency: optional external adjacency (see
                :meth:`GraphLlamaModel.forward`), included in the graphs.

        Returns:
            An :class:`~pyg_transformer.graph.AttentionGraph` of ``B`` graphs with ``T``
            nodes each (``layer`` and ``head`` given), else a list over heads (``layer``
            given) or a list over layers of lists over heads.
        """
        attentions = self._graph_attentions()
        if not attentions:
            raise ValueError(
                "attention_graphs needs attention_type 'gin' or 'pna', got "
                f"{self.config.attention_type!r}"
            )
        layers = range(len(attentions)) if layer is None else [layer]
        for index in layers:
            if isinstance(index, bool) or not isinstance(index, int) or not (
                0 <= index < len(attentions)
            ):
                raise ValueError(f"layer must be an int in [0, {len(attentions)}), got {index!r}")
        num_heads = self.config.num_attention_heads
        if head is not None and (
            isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < num_heads
        ):
            raise ValueError(f"head must be an int in [0, {num_heads}), got {head!r}")
        captured: dict[int, dict] = {}
        hooks = [
            attentions[index].register_forward_pre_hook(
                lambda module, args, kwargs, index=index: captured.__setitem__(index, kwargs),
                with_kwargs=True,
            )
            for index in layers
        ]
        try:
            self(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                 external_adjacency=external_adjacency)
        finally:
            for hook in hooks:
                hook.remove()
        heads = range(num_heads) if head is None else [head]
        result = []
        for index in layers:
            kwargs = captured[index]
            graphs = [
                attentions[index].attention_graph(
                    kwargs["hidden_states"], kwargs["position_embeddings"],
                    kwargs.get("attention_mask"), head=h,
                    external_adjacency=kwargs.get("external_adjacency"),
                )
                for h in heads
            ]
            result.append(graphs[0] if head is not None else graphs)
        return result[0] if layer is not None else result


class GraphLlamaModel(GraphLlamaPreTrainedModel, LlamaModel):
    """:class:`~transformers.LlamaModel` with graph attention layers.

    For ``"gin"``/``"pna"`` the layers receive the 2D padding mask ``[B, Tk]`` instead
    of a 4D additive mask. Without ``position_ids``, positions are counted over real
    tokens (``cumsum(attention_mask) - 1``, as ``generate`` does), so left and right
    padding give the same logits.

    ``__init__`` is ``LlamaModel.__init__`` building :class:`GraphLlamaDecoderLayer`
    layers (see :func:`~pyg_transformer.compat.reuse_init`).
    """

    def __init__(self, config: GraphLlamaConfig):
        _model_init(self, config)

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        external_adjacency: Tensor | AttentionGraph | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Llama's forward; ``external_adjacency`` (GIN/PNA only): a dense
        ``[B, T, T]`` tensor (``E[b, i, j]`` = weight of the edge ``j -> i``; with a
        cache ``[B, T_new, past + T_new]`` or ``[B, past + T_new, past + T_new]``) or an
        :class:`~pyg_transformer.graph.AttentionGraph`, added to every head's adjacency
        :math:`A'` of every layer on causal, non-padding pairs."""
        if cache is None:
            cache = past_key_values
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        batch, num_queries = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        graph = self.config.attention_type != "standard"
        if external_adjacency is not None:
            if not graph:
                raise ValueError(
                    "external_adjacency needs attention_type 'gin' or 'pna', got 'standard'"
                )
            kwargs["external_adjacency"] = external_adjacency
        if attention_mask is not None and attention_mask.dim() == 2:
            if attention_mask.shape != (batch, past + num_queries):
                raise ValueError(
                    f"attention_mask must have shape [B, past + T] = "
                    f"[{batch}, {past + num_queries}], got {tuple(attention_mask.shape)}"
                )
        elif attention_mask is not None and graph:
            raise ValueError(
                "graph attention needs a 2D padding mask [B, past + T], got shape "
                f"{tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                position_ids = position_ids[:, -num_queries:]
            else:
                position_ids = torch.arange(num_queries, device=inputs_embeds.device) + past
                position_ids = position_ids.unsqueeze(0)
        if graph:
            layer_mask = attention_mask
            if layer_mask is not None and bool(layer_mask.all()):
                layer_mask = None
        else:
            layer_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=layer_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


_model_init = reuse_init(LlamaModel, LlamaDecoderLayer=GraphLlamaDecoderLayer)


class GraphLlamaForCausalLM(GraphLlamaPreTrainedModel, LlamaForCausalLM):
    r"""Causal LM with GIN-/PNA-Attention: :class:`~transformers.LlamaForCausalLM` on a
    :class:`GraphLlamaModel`. Works with ``Trainer``, ``save_pretrained`` /
    ``from_pretrained``, ``generate`` (with a :class:`~transformers.DynamicCache`) and
    the Auto classes.

    Example::

        from pyg_transformer import GraphLlamaConfig, GraphLlamaForCausalLM

        config = GraphLlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, attention_type="gin")
        model = GraphLlamaForCausalLM(config)
        model.graph_parameters()    # {"alpha": [L], "eps": [L, H]}

    ``__init__`` is ``LlamaForCausalLM.__init__`` building a :class:`GraphLlamaModel`
    (see :func:`~pyg_transformer.compat.reuse_init`).
    """

    def __init__(self, config: GraphLlamaConfig):
        _causal_lm_init(self, config)


_causal_lm_init = reuse_init(LlamaForCausalLM, LlamaModel=GraphLlamaModel)


__all__ = [
    "GraphLlamaDecoderLayer",
    "GraphLlamaForCausalLM",
    "GraphLlamaModel",
    "GraphLlamaPreTrainedModel",
]
