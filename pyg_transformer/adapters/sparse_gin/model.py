"""Attach Sparse-GIN adapters to a frozen Hugging Face causal LM through forward hooks: the
peft tuner (:class:`SparseGinModel`) and the ``PeftModel`` our API returns
(:class:`SparseGinPeftModel`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftConfig, PeftModel, PeftModelForCausalLM
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import Tensor, nn

from pyg_transformer import compat
from pyg_transformer.adapters.sparse_gin import capture
from pyg_transformer.adapters.sparse_gin.config import SparseGinConfig
from pyg_transformer.adapters.sparse_gin.layer import SparseGinLayer, refuse_merge
from pyg_transformer.graph import AttentionGraph

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
PREFIX = "sparse_gin_"
#: the name of the :class:`SparseGinLayer` child of an adapted decoder layer
LAYER_NAME = "sparse_gin"


# ----------------------------------------------------------------------------- discovery
def _attention_name(layer: nn.Module) -> str | None:
    for name in ATTENTION_NAMES:
        if isinstance(getattr(layer, name, None), nn.Module):
            return name
    return None


def find_decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, str]:
    """``(backbone, layers, attention attribute name)`` of a causal LM.

    Raises:
        ValueError: if no list of decoder layers with an attention block is found.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            names = {_attention_name(layer) for layer in module}
            if len(names) == 1 and None not in names:
                parent = model.get_submodule(name.rpartition(".")[0])
                return parent, module, names.pop()
    raise ValueError(
        f"Sparse-GIN found no decoder layers in {type(model).__name__}: it needs a "
        f"ModuleList of layers that each have an attention block named one of {ATTENTION_NAMES}"
    )


#: the model types Sparse-GIN supports -> the submodule of their decoder layer that first
#: reads the layer input (its forward pre-hook sees the residual, also inside activation
#: checkpointing). Each of these decoder layers adds its attention block's output straight
#: to the layer input (``residual + attn_out``), which makes the hook-based merge exact.
RESIDUAL_READERS: dict[str, str] = {
    "gemma": "input_layernorm",
    "gpt2": "ln_1",
    "llama": "input_layernorm",
    "mistral": "input_layernorm",
    "mixtral": "input_layernorm",
    "olmo": "input_layernorm",
    "qwen2": "input_layernorm",
    "qwen2_moe": "input_layernorm",
    "qwen3": "input_layernorm",
    "starcoder2": "input_layernorm",
}


def residual_reader(model: nn.Module, layer: nn.Module) -> str:
    """The name of the submodule of decoder ``layer`` of ``model`` that first reads the
    layer input (see :data:`RESIDUAL_READERS`).

    Raises:
        ValueError: naming the model type and the supported ones, for a model type that
            is not in :data:`RESIDUAL_READERS` or whose layer lacks that submodule.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    reader = RESIDUAL_READERS.get(model_type)
    if reader is None or not isinstance(getattr(layer, reader, None), nn.Module):
        raise ValueError(
            f"Sparse-GIN does not support model type {model_type!r} "
            f"({type(model).__name__}): supported are {', '.join(sorted(RESIDUAL_READERS))}, "
            "whose decoder layers add the attention output straight to the layer input "
            "(`residual + attn_out`)")
    return reader


def check_attention_interface(model: nn.Module, attention: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model``'s attention runs through transformers'
    :class:`~transformers.AttentionInterface` (so the Sparse-GIN attention function sees
    its queries and keys)."""
    if not compat.supports_attention_interface(model):
        raise ValueError(
            f"Sparse-GIN does not support {type(model).__name__}: its attention "
            f"({type(attention).__name__}) does not go through transformers' AttentionInterface"
        )


# ----------------------------------------------------------------------------- counting
def count_lora_parameters(model: nn.Module, lora_config) -> int:
    """Trainable parameters ``lora_config`` (plain LoRA) would add to ``model``:
    ``r * (in + out)`` per targeted linear layer."""
    total = 0
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(lora_config, name):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            continue
        rank = lora_config.rank_pattern.get(name.rpartition(".")[2], lora_config.r)
        total += rank * (weight.size(0) + weight.size(1))
    if total == 0:
        raise ValueError(f"lora_config targets no 2-D weight of {type(model).__name__}")
    return total


def count_sparse_gin_parameters(model: nn.Module, config: SparseGinConfig) -> int:
    """Trainable parameters of the Sparse-GIN adapter ``config`` on ``model``."""
    _, layers, _ = find_decoder_layers(model)
    hidden_size = model.config.hidden_size
    targets = config.target_layers or range(len(layers))
    layer = SparseGinLayer(0, hidden_size)
    layer.update_layer("default", config, 0.0, max_seq_len=8)
    per_layer = sum(
        p.numel() for n, p in layer.named_parameters()
        if p.requires_grad or "sparse_gin_lambda" not in n
    )
    return per_layer * len(list(targets))



# ----------------------------------------------------------------------------- the tuner
def adapted_layers(model: nn.Module) -> dict[str, SparseGinLayer]:
    """Module name -> :class:`SparseGinLayer` of every adapted decoder layer of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseGinLayer)}


class SparseGinModel(BaseTuner):
    r"""The peft tuner of Sparse-GIN: one :class:`SparseGinLayer` per target decoder layer
    of a frozen causal LM (the ``sparse_gin`` child of that layer), attached through
    forward hooks; nothing of the base model is replaced.

    Per adapted layer the decoder's own residual add yields
    :math:`X + \lambda_l \operatorname{RMSNorm}(\operatorname{GNN}(X, A'))` with
    :math:`X = R + O` (layer input plus attention output) and :math:`A'` the layer's
    sharpened, thresholded attention graph, built from its own post-RoPE queries and keys
    (see :class:`SparseGinConfig`).

    Use it through peft: ``peft.get_peft_model(model, SparseGinConfig(...))`` (or
    :func:`get_sparse_gin_model`) returns a ``PeftModel`` whose ``base_model`` is this
    tuner; ``add_adapter``, ``set_adapter``, ``delete_adapter``, ``disable_adapter``,
    ``unload``, ``save_pretrained`` / ``PeftModel.from_pretrained``,
    ``AutoPeftModelForCausalLM`` and transformers' ``load_adapter`` work as for LoRA.
    """

    prefix: str = PREFIX
    tuner_layer_cls = SparseGinLayer
    target_module_mapping: dict = {}

    def __init__(self, model: nn.Module, peft_config: SparseGinConfig | dict[str, SparseGinConfig],
                 adapter_name: str = "default", low_cpu_mem_usage: bool = False,
                 state_dict: dict[str, Tensor] | None = None) -> None:
        config = peft_config[adapter_name] if isinstance(peft_config, dict) else peft_config
        if not isinstance(config, SparseGinConfig):
            raise TypeError(f"config must be a SparseGinConfig, got {type(config).__name__}")
        config.validate()
        existing = adapted_layers(model)
        if existing and not compat.loaded_by_transformers(model):
            names = sorted({a for layer in existing.values() for a in layer.sparse_gin_gnn})
            raise ValueError(
                f"this model already carries Sparse-GIN adapters {names}; add "
                "another one to its PeftModel with peft_model.add_adapter(name, "
                "SparseGinConfig(...)) or peft_model.load_adapter(folder, adapter_name=name), "
                "or unload() the first")
        super().__init__(model, peft_config, adapter_name, low_cpu_mem_usage, state_dict)

    # -- peft tuner interface ------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        # peft's injection reads ``target_modules``; Sparse-GIN targets decoder layers by
        # index (``target_layers``), so it is no field of the config (nor saved)
        peft_config.__dict__.setdefault("target_modules", None)
        return peft_config

    def inject_adapter(self, model: nn.Module, adapter_name: str,
                       autocast_adapter_dtype: bool = True, low_cpu_mem_usage: bool = False,
                       state_dict: dict[str, Tensor] | None = None) -> None:
        """Check that ``model`` is supported, then let peft create the adapter
        ``adapter_name`` on the target decoder layers (peft's tuner interface; the layers
        come from the config, so a ``state_dict`` is only checked, not used to match).

        Raises:
            ValueError: for an unsupported model or out-of-range ``target_layers``;
                ``model`` is left unmodified then.
        """
        config: SparseGinConfig = self.peft_config[adapter_name]
        config.validate()
        _, layers, attn_name = find_decoder_layers(model)
        check_attention_interface(model, getattr(layers[0], attn_name))
        self._residual_reader = residual_reader(model, layers[0])
        self._attn_name = attn_name
        num_layers = len(layers)
        targets = config.target_layers if config.target_layers is not None else range(num_layers)
        bad = [i for i in targets if i >= num_layers]
        if bad:
            raise ValueError(
                f"target_layers {bad} out of range for a model with {num_layers} decoder layers")
        names = {id(m): name for name, m in model.named_modules()}
        self._targets = {names[id(layers[i])]: i for i in targets}
        self._num_layers = num_layers
        if "_previous_attn" not in self.__dict__:  # the first adapter: how to restore the base
            self._previous_attn = compat.attn_implementation(model.config)
            self._requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
        implementation = capture.attention_name(compat.attn_implementation(model.config))
        if compat.attn_implementation(model.config) != implementation:
            model.set_attn_implementation(implementation)
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                               low_cpu_mem_usage=low_cpu_mem_usage)

    def _check_target_module_exists(self, peft_config: PeftConfig, key: str) -> bool:
        return key in self._targets

    def _create_and_replace(self, peft_config: SparseGinConfig, adapter_name: str,
                            target: nn.Module, target_name: str, parent: nn.Module,
                            current_key: str) -> None:
        idx = self._targets[current_key]
        layer = getattr(target, LAYER_NAME, None)
        if not isinstance(layer, SparseGinLayer):
            layer = SparseGinLayer(idx, self.model.config.hidden_size)
            target.add_module(LAYER_NAME, layer)
            reader = getattr(target, self._residual_reader) if self._residual_reader else target
            layer.attach(reader, getattr(target, self._attn_name))
        if peft_config.scale_init == "zero":
            scale = 0.0
        elif peft_config.scale_init == "constant" or self._num_layers == 1:
            scale = peft_config.scale_max
        else:
            scale = peft_config.scale_max * idx / (self._num_layers - 1)
        max_len = getattr(self.model.config, "max_position_embeddings", None) or 2048
        layer.update_layer(adapter_name, peft_config, scale, max_seq_len=max_len)
        param = next(target.parameters())
        layer.to(param.device)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        key = key.replace(f".sparse_gin_gnn.{adapter_name}.", ".sparse_gin_gnn.")
        return key.removesuffix(f".sparse_gin_lambda.{adapter_name}") + (
            ".sparse_gin_lambda" if key.endswith(f".sparse_gin_lambda.{adapter_name}") else "")

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: PeftConfig,
                                           adapter_name: str,
                                           state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """peft's per-method hook before it loads checkpoint weights: map the keys, then
        refuse weights that do not fit the adapter on ``model``. An adapter that was just
        created for this load (``PeftModel.from_pretrained``) is removed again then, so
        the base model is left as it was.

        Raises:
            ValueError: naming the decoder layers, or the key and both shapes, that differ.
        """
        remapped = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict)
        own = {k: v for k, v in model.state_dict().items()
               if f".sparse_gin_gnn.{adapter_name}." in k
               or k.endswith(f".sparse_gin_lambda.{adapter_name}")}
        layers = adapted_layers(model).values()
        try:
            _check_adapter_weights(model, own, remapped, adapter_name)
        except ValueError as error:
            if not isinstance(model, PeftModel) or not all(
                    adapter_name in layer.fresh_adapters for layer in layers):
                raise
            if len(model.peft_config) == 1:
                model.base_model.unload()
            else:
                model.delete_adapter(adapter_name)
            raise ValueError(f"{error} (the adapter was removed again; the base model is "
                             "unchanged)") from None
        for layer in layers:
            layer.fresh_adapters.discard(adapter_name)
        return remapped

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False,
                                     safe_merge: bool = False, adapter_names=None) -> nn.Module:
        if merge:
            refuse_merge()
        layers = adapted_layers(self.model)
        if not layers:
            raise ValueError(
                f"this Sparse-GIN adapter was already unloaded: unload() returned the base "
                f"{type(self.model).__name__}, which carries no adapter any more")
        for name, layer in layers.items():
            layer.detach_hooks()
            delattr(self.model.get_submodule(name.rpartition(".")[0]), LAYER_NAME)
        previous = self.__dict__.get("_previous_attn") or capture.previous_implementation(
            compat.attn_implementation(self.model.config))
        self.model.set_attn_implementation(previous)
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.__dict__.get("_requires_grad_before", {}).get(
                name, param.requires_grad))
        if "peft_config" in self.model.__dict__:
            del self.model.__dict__["peft_config"]
        return self.model

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        """Not available (see :meth:`SparseGinLayer.merge`).

        Raises:
            ValueError: always.
        """
        refuse_merge()

    # -- running -------------------------------------------------------------------------
    def forward(self, *args: Any, external_adjacency=None, **kwargs: Any):
        """The base model's forward.

        Args:
            external_adjacency: optional domain graph added to the attention-derived
                adjacency before sharpening: a dense ``[B, T, T]`` tensor (``A[b, i, j]`` =
                weight of the edge ``j -> i``) or a COO pair ``(edge_index [2, E]`` in flat
                ids ``b * T + t, edge_weight [E])``. Only causal (``j <= i``), non-padding
                entries can become edges. It travels to the attention layers as the
                keyword ``sparse_gin_external`` (a dense tensor), which a base model loaded
                with transformers' ``load_adapter`` accepts as well.
        """
        if external_adjacency is not None:
            kwargs["sparse_gin_external"] = _dense_external(external_adjacency, args, kwargs)
        return self.model(*args, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        """Enable the base model's activation (gradient) checkpointing. The adapters run
        inside the checkpointed layers; with ``use_reentrant=True`` the embeddings' output
        is made to require grad so that adapter gradients still flow."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
        if (activation_checkpointing_kwargs or {}).get("use_reentrant", True):
            self.model.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        """Alias of :meth:`activation_checkpointing_enable` (transformers' old name)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # -- inspection ----------------------------------------------------------------------
    @property
    def adapter_layers(self) -> dict[int, SparseGinLayer]:
        """Adapted decoder layer index -> its :class:`SparseGinLayer`."""
        return {layer.layer_idx: layer for layer in adapted_layers(self.model).values()}

    def graph_stats(self) -> dict[int, dict[str, float]]:
        """Per adapted layer, from the last forward: ``nodes``, ``edges``,
        ``cross_token_edges`` and ``mean_degree`` (edges per query node)."""
        stats = {}
        for idx, layer in self.adapter_layers.items():
            graph = layer.last_graph
            if graph is None:
                continue
            num_queries = graph.batch_size * (graph.seq_len - graph.query_offset)
            stats[idx] = {
                "nodes": graph.num_nodes,
                "edges": graph.num_edges,
                "cross_token_edges": graph.num_cross_token_edges(),
                "mean_degree": graph.num_edges / max(num_queries, 1),
            }
        return stats

    def graph_parameters(self) -> dict[str, Tensor]:
        """Learned graph scalars of the first active adapter (detached, CPU):
        ``{"lambda": [L_adapted]}`` plus, for ``gnn_type="gin"``,
        ``{"eps": [L_adapted, num_gnn_layers]}``."""
        adapter = self.active_adapters[0]
        layers = [layer for _, layer in sorted(self.adapter_layers.items())
                  if adapter in layer.sparse_gin_gnn]
        out = {"lambda": torch.stack([
            layer.sparse_gin_lambda[adapter].detach().float().cpu() for layer in layers])}
        if self.peft_config[adapter].gnn_type == "gin":
            out["eps"] = torch.stack([
                torch.stack([conv.eps.detach().float().cpu().reshape(())
                             for conv in layer.sparse_gin_gnn[adapter].convs])
                for layer in layers])
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(layers={sorted(self.adapter_layers)}, "
                f"adapters={list(self.peft_config)}, model={type(self.model).__name__})")


def _check_adapter_weights(model: nn.Module, own: dict[str, Tensor],
                           given: dict[str, Tensor], adapter_name: str) -> None:
    """Refuse checkpoint weights ``given`` (model keys) that do not fit the adapter
    weights ``own`` of ``model``: other adapted layers, keys or shapes.

    Raises:
        ValueError: naming the layers, or the key and both shapes, that differ.
    """
    def layer_of(key: str) -> int | None:
        match = re.search(r"\.(\d+)\.sparse_gin\.", key)
        return int(match.group(1)) if match else None

    given = {k: v for k, v in given.items() if ".sparse_gin." in k}
    base = model.base_model if isinstance(model, PeftModel) else model
    base = base.model if isinstance(base, BaseTuner) else base
    name = type(base).__name__
    saved_layers = sorted({layer_of(k) for k in given} - {None})
    own_layers = sorted({layer_of(k) for k in own} - {None})
    if saved_layers != own_layers:
        num_layers = len(find_decoder_layers(base)[1])
        raise ValueError(
            f"the adapter holds weights for decoder layers {saved_layers}, but this {name} "
            f"({num_layers} decoder layer{'s' * (num_layers != 1)}) adapts layers {own_layers}: "
            "it was saved for another base model")
    missing, unexpected = set(own) - set(given), set(given) - set(own)
    if unexpected or missing:
        raise ValueError(f"adapter weights do not match this model: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    hidden = getattr(getattr(base, "config", None), "hidden_size", None)
    lin_in = next((v for k, v in given.items() if k.endswith(".lin_in.weight")), None)
    saved_hidden = None if lin_in is None else lin_in.shape[-1]
    for key in sorted(own):
        saved, expected = tuple(given[key].shape), tuple(own[key].shape)
        if saved == expected:
            continue
        cause = (f"the adapter was saved for a base model with hidden_size={saved_hidden}, "
                 f"this {name} has hidden_size={hidden}"
                 if saved_hidden is not None and saved_hidden != hidden
                 else "the weights do not fit the adapter configuration")
        shown = SparseGinModel._remove_adapter_name_from_key(key, adapter_name).removeprefix(
            "base_model.model.")
        raise ValueError(f"adapter weight {shown!r} has shape {saved} in the checkpoint but "
                         f"{expected} in this model: {cause}")


# ----------------------------------------------------------------------------- helpers
_PEFT_CONFIG_FIELDS = {f.name for f in dataclasses.fields(PeftConfig)}


def _check_same_adapter_config(path: str, new: dict) -> None:
    """Refuse to replace the adapter config at ``path`` by a different one ``new``."""
    folder = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{folder!r} holds an unreadable {CONFIG_NAME} ({error}); pass overwrite=True "
            "to replace it"
        ) from None
    if not isinstance(old, dict):
        old = {}
    # the method and its own fields; peft's bookkeeping (inference_mode,
    # base_model_name_or_path, auto_mapping, revision, ...) does not make another adapter
    keys = ["peft_type"] + [f.name for f in dataclasses.fields(SparseGinConfig)
                            if f.name not in _PEFT_CONFIG_FIELDS]
    differing = [
        f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
        for key in keys if old.get(key) != new.get(key)
    ]
    if differing:
        raise ValueError(
            f"{folder!r} already holds an adapter of another configuration "
            f"({'; '.join(differing)}); pass overwrite=True to replace it, or save to "
            "another folder"
        )


def _input_shape(args, kwargs) -> tuple[int, int] | None:
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(ids, Tensor):
        return ids.size(0), ids.size(1)
    embeds = kwargs.get("inputs_embeds")
    if isinstance(embeds, Tensor):
        return embeds.size(0), embeds.size(1)
    return None


def _dense_external(external, args, kwargs) -> Tensor:
    shape = _input_shape(args, kwargs)
    if shape is None:
        raise ValueError("external_adjacency needs input_ids or inputs_embeds")
    B, T = shape
    if isinstance(external, Tensor):
        if external.shape != (B, T, T):
            raise ValueError(
                f"external_adjacency must have shape [B, T, T] = [{B}, {T}, {T}], "
                f"got {tuple(external.shape)}"
            )
        dense = external
    elif isinstance(external, (tuple, list)) and len(external) == 2:
        edge_index, edge_weight = external
        if (not isinstance(edge_index, Tensor) or edge_index.dim() != 2
                or edge_index.size(0) != 2):
            raise ValueError(
                "external_adjacency edge_index must have shape [2, E], got "
                f"{tuple(getattr(edge_index, 'shape', ()))}"
            )
        if not isinstance(edge_weight, Tensor) or edge_weight.shape != (edge_index.size(1),):
            raise ValueError(
                f"external_adjacency edge_weight must have shape [{edge_index.size(1)}], got "
                f"{tuple(getattr(edge_weight, 'shape', ()))}"
            )
        src, dst = edge_index
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= B * T
                                   or bool((src // T != dst // T).any())):
            raise ValueError(
                f"external_adjacency edge_index must hold flat ids b * T + t < {B * T} "
                "within one sequence per edge"
            )
        dense = AttentionGraph.from_coo(edge_index, edge_weight, batch_size=B,
                                        seq_len=T).to_dense()
    else:
        raise ValueError(
            "external_adjacency must be a [B, T, T] tensor or an (edge_index, edge_weight) "
            f"pair, got {type(external).__name__}"
        )
    if not dense.is_floating_point() or not torch.isfinite(dense).all():
        raise ValueError("external_adjacency must hold finite floating point weights")
    return dense


# ----------------------------------------------------------------------------- the PeftModel
class SparseGinPeftModel(PeftModelForCausalLM):
    """The ``PeftModel`` :func:`get_sparse_gin_model` returns: peft's
    ``PeftModelForCausalLM`` whose :meth:`save_pretrained` is atomic and refuses to replace
    an adapter of another configuration, and whose :meth:`from_pretrained` leaves the base
    model untouched when the saved adapter does not fit it. What it saves loads with every
    loader (``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM``, transformers'
    ``load_adapter``)."""

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = False,
                        *, is_main_process: bool = True, **kwargs: Any) -> None:
        """peft's ``save_pretrained`` (``adapter_config.json`` +
        ``adapter_model.safetensors`` per adapter; other adapters in sub-folders named
        after them), made atomic: everything is written to a temporary folder inside
        ``save_directory`` first, then moved into place with :func:`os.replace`, weights
        before config, so a failed save leaves the previous files untouched and never a
        new config beside old weights. No model card is written.

        Saving the same configuration again replaces the weights, as peft does. A folder
        that already holds an adapter of another configuration (another peft method or
        different fields) is refused unless ``overwrite=True``.

        Args:
            save_directory: folder to write to (created if missing).
            overwrite: replace an adapter of another configuration.
            is_main_process: if ``False`` (non-main distributed ranks) nothing is written.
            **kwargs: peft's ``save_pretrained`` arguments (``state_dict``,
                ``selected_adapters``, ``safe_serialization``, ...).

        Raises:
            ValueError: ``save_directory`` is a file, or holds an adapter of another
                configuration and ``overwrite`` is ``False``.
        """
        if not is_main_process:
            return
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory must be a directory, got the file {save_directory!r}")
        os.makedirs(save_directory, exist_ok=True)
        staging = tempfile.mkdtemp(dir=save_directory, prefix=".sparse_gin_save.")
        try:
            with _no_model_card(self):
                super().save_pretrained(staging, is_main_process=True, **kwargs)
            folders = sorted(os.path.relpath(root, staging) for root, _, files
                             in os.walk(staging) if CONFIG_NAME in files)
            if not overwrite:
                for folder in folders:
                    target = os.path.normpath(os.path.join(save_directory, folder, CONFIG_NAME))
                    if os.path.exists(target):
                        staged = os.path.join(staging, folder, CONFIG_NAME)
                        with open(staged, encoding="utf-8") as f:
                            _check_same_adapter_config(target, json.load(f))
            for folder in folders:
                os.makedirs(os.path.join(save_directory, folder), exist_ok=True)
                for name in (WEIGHTS_NAME, CONFIG_NAME):  # weights first
                    os.replace(os.path.join(staging, folder, name),
                               os.path.normpath(os.path.join(save_directory, folder, name)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike,
                        adapter_name: str = "default", is_trainable: bool = False,
                        **kwargs: Any) -> SparseGinPeftModel:
        """Attach the Sparse-GIN adapter saved in folder ``model_id`` to ``model``.

        Raises:
            ValueError: the saved weights do not fit ``model`` (another hidden size, other
                decoder layers), naming both; ``model`` is left as it was then.
        """
        config = SparseGinConfig.from_pretrained(os.fspath(model_id))
        config.inference_mode = not is_trainable
        peft_model = cls(model, config, adapter_name)
        try:
            peft_model.load_adapter(os.fspath(model_id), adapter_name, is_trainable=is_trainable,
                                    **kwargs)
        except BaseException:
            if adapted_layers(model):  # not removed by the failed load itself
                peft_model.base_model.unload()
            raise
        if not is_trainable:
            peft_model.eval()
        return peft_model


@contextmanager
def _no_model_card(peft_model):
    """Skip peft's README.md model card (it would need the Hub's metadata)."""
    peft_model.create_or_update_model_card = lambda output_dir: None
    try:
        yield
    finally:
        del peft_model.create_or_update_model_card
