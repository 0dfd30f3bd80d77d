"""Attach Sparse-GIN adapters to a frozen Hugging Face causal LM through forward hooks."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import shutil
import tempfile
import textwrap
import weakref
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pyg_transformer.adapters.sparse_gin import capture
from pyg_transformer.adapters.sparse_gin.config import SparseGinConfig
from pyg_transformer.adapters.sparse_gin.layer import DecodeRow, SparseGinLayer
from pyg_transformer.adapters.sparse_gin.registration import PREFIX
from pyg_transformer.graph import AttentionGraph, qk_to_graph
from pyg_transformer.graph.construction import _reduce_heads, _sparsify_rows, causal_valid_mask

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
SAVED_KEY_PREFIX = "base_model."


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


def _check_residual_merge(layer: nn.Module, attn_name: str) -> str | None:
    """Check (on the source of ``layer.forward``) that the decoder layer computes
    ``residual + attention_output`` right after its attention block, with ``residual``
    the layer input; the hook-based merge is exact only then.

    Returns:
        the name of the submodule (the input norm) that first reads the layer input, whose
        forward pre-hook sees the residual inside activation checkpointing, or ``None``.
    """
    cls = type(layer).__name__
    error = ValueError(
        f"Sparse-GIN does not support {cls}: its forward must add the output of "
        f"`self.{attn_name}(...)` straight to the layer input (`residual + attn_out`), as "
        "Llama, Qwen2, Mistral and GPT-2 decoder layers do"
    )
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(type(layer).forward)))
        func = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        raise error from None
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(func.args.args) < 2:
        raise error
    x_in = func.args.args[1].arg
    residual = out = first_reader = None
    body = list(func.body)
    for i, stmt in enumerate(body):
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target, value = stmt.targets[0], stmt.value
        if (out is None and isinstance(value, ast.Name) and value.id == x_in
                and isinstance(target, ast.Name)):
            residual = target.id
        elif (out is None and first_reader is None and isinstance(value, ast.Call)
              and isinstance(value.func, ast.Attribute)
              and isinstance(value.func.value, ast.Name) and value.func.value.id == "self"
              and value.func.attr != attn_name and len(value.args) == 1
              and isinstance(value.args[0], ast.Name) and value.args[0].id == x_in):
            first_reader = value.func.attr
        elif (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
              and isinstance(value.func.value, ast.Name) and value.func.value.id == "self"
              and value.func.attr == attn_name):
            first = target.elts[0] if isinstance(target, ast.Tuple) else target
            if not isinstance(first, ast.Name) or residual is None:
                raise error
            out = first.id
            for nxt in body[i + 1:]:
                if not any(isinstance(n, ast.Name) and n.id == out for n in ast.walk(nxt)):
                    continue
                val = getattr(nxt, "value", None)
                if (isinstance(nxt, ast.Assign) and isinstance(val, ast.BinOp)
                        and isinstance(val.op, ast.Add)
                        and {getattr(val.left, "id", None), getattr(val.right, "id", None)}
                        == {out, residual}):
                    reader = getattr(layer, first_reader, None) if first_reader else None
                    return first_reader if isinstance(reader, nn.Module) else None
                raise error
    raise error


def _check_not_adapted(model: nn.Module) -> None:
    """Refuse a model whose attention blocks already report to a Sparse-GIN adapter."""
    _, layers, attn_name = find_decoder_layers(model)
    owners = {capture.capture_owner(getattr(layer, attn_name)) for layer in layers} - {None}
    if owners:
        raise ValueError(
            f"this model already carries a Sparse-GIN adapter (attached by "
            f"{next(iter(owners))!r}); call unload() on that adapter first, or load the "
            "saved adapter onto a fresh base model"
        )


def _check_attention_interface(model: nn.Module, attention: nn.Module) -> None:
    try:
        source = inspect.getsource(type(attention).forward)
    except (OSError, TypeError):
        source = ""
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if "ALL_ATTENTION_FUNCTIONS" not in source or (can_set is not None and not can_set()):
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


# ----------------------------------------------------------------------------- the model
class SparseGinModel(BaseTuner):
    r"""A frozen causal LM with one Sparse-GIN adapter per target decoder layer (SPEC §4).

    Nothing of the base model is replaced: a forward pre-hook on each adapted decoder
    layer's input norm records the layer input :math:`R` (the residual), the
    ``"sparse_gin"`` attention function builds the layer's graph :math:`A'` from its post-RoPE queries and keys, and
    a forward hook on the attention block turns its output :math:`O` into
    :math:`O + \lambda_l \operatorname{RMSNorm}(\operatorname{GNN}(X, A'))` with
    :math:`X = R + O`, so the decoder's own residual add gives
    :math:`X + \lambda_l \operatorname{RMSNorm}(\operatorname{GNN}(X, A'))` before the
    feed-forward block. ``forward``, ``generate`` and ``config`` are the base model's.

    Also the peft tuner class of ``peft.get_peft_model(model, SparseGinConfig(...))``.

    Args:
        model: a Hugging Face causal LM whose attention goes through transformers'
            ``AttentionInterface`` (Llama, Qwen2, Mistral, GPT-2, ...).
        peft_config: a :class:`SparseGinConfig` (or ``{adapter_name: config}``).
        adapter_name: name of the adapter (one adapter per model).
    """

    prefix: str = PREFIX
    tuner_layer_cls = SparseGinLayer
    target_module_mapping: dict = {}

    def __init__(
        self,
        model: nn.Module,
        peft_config: SparseGinConfig | dict[str, SparseGinConfig],
        adapter_name: str = "default",
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, Tensor] | None = None,
    ) -> None:
        config = peft_config[adapter_name] if isinstance(peft_config, dict) else peft_config
        if not isinstance(config, SparseGinConfig):
            raise TypeError(f"config must be a SparseGinConfig, got {type(config).__name__}")
        config.validate()
        # before BaseTuner.__init__, which would add this config to the peft_config dict the
        # adapter already attached to ``model`` shares with it
        _check_not_adapted(model)
        super().__init__(model, peft_config, adapter_name, low_cpu_mem_usage, state_dict)

    # -- peft tuner interface ------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config

    def _create_and_replace(self, *args, **kwargs):  # pragma: no cover - never replaces
        raise NotImplementedError("Sparse-GIN attaches through hooks, it replaces no module")

    def _check_target_module_exists(self, peft_config, key):  # pragma: no cover
        return False

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for adapter_name, config in self.peft_config.items():
            for layer in self.sparse_gin_layers.values():
                train = not config.inference_mode
                layer.sparse_gin_gnn[adapter_name].requires_grad_(train)
                layer.sparse_gin_lambda[adapter_name].requires_grad_(
                    train and config.trainable_scale
                )

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return (
            key.replace(f".sparse_gin_gnn.{adapter_name}.", ".sparse_gin_gnn.")
            .removesuffix(f".sparse_gin_lambda.{adapter_name}")
            + (".sparse_gin_lambda" if key.endswith(f".sparse_gin_lambda.{adapter_name}") else "")
        )

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, Tensor] | None = None,
    ) -> None:
        """Create the adapters of ``adapter_name``, freeze ``model`` and attach the hooks
        (called by the constructor; peft's tuner interface).

        Raises:
            ValueError: for an unsupported model, out-of-range ``target_layers``, a
                second adapter, a model that already carries a Sparse-GIN adapter, or a
                ``state_dict`` (checkpoint weights to check) that does not fit the model.
                Nothing of ``model`` is modified then.
        """
        if "sparse_gin_layers" in self._modules:
            raise ValueError(
                "Sparse-GIN supports one adapter per model; unload() the current one first"
            )
        config: SparseGinConfig = self.peft_config[adapter_name]
        backbone, layers, attn_name = find_decoder_layers(model)
        num_layers = len(layers)
        _check_attention_interface(model, getattr(layers[0], attn_name))
        reader = _check_residual_merge(layers[0], attn_name)
        targets = config.target_layers if config.target_layers is not None else range(num_layers)
        bad = [i for i in targets if i >= num_layers]
        if bad:
            raise ValueError(
                f"target_layers {bad} out of range for a model with {num_layers} decoder layers"
            )
        hidden_size = model.config.hidden_size
        max_len = getattr(model.config, "max_position_embeddings", None) or 2048
        param = next(model.parameters())

        self.sparse_gin_layers = nn.ModuleDict()
        for idx in targets:
            if config.scale_init == "zero":
                scale = 0.0
            elif config.scale_init == "constant" or num_layers == 1:
                scale = config.scale_max
            else:
                scale = config.scale_max * idx / (num_layers - 1)
            layer = SparseGinLayer(idx, hidden_size)
            layer.update_layer(adapter_name, config, scale, max_seq_len=max_len)
            self.sparse_gin_layers[str(idx)] = layer.to(param.device)
        if state_dict is not None:  # checkpoint weights: refuse them before attaching
            self._check_adapter_state(state_dict)

        # plain attributes, not submodules: the base model's modules are not the adapter's
        object.__setattr__(self, "_backbone", backbone)
        object.__setattr__(self, "_decoder_layers", layers)
        self._attn_name = attn_name
        self._residual_reader = reader
        self._backbone_signature = inspect.signature(backbone.forward)
        self._padding_mask: Tensor | None = None
        self._external: Tensor | None = None
        self._step = None  # per-forward constants shared by all layers (see _step_constants)
        self._store_features = False
        self._cache_ref = None
        self._hooks = []
        self._attach(model)
        self._fresh = True  # no forward, no weight load yet: see _remap_adapter_state_dict_for_load
        self._requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
        self._mark_only_adapters_as_trainable(model)
        self._expose_base_signature(model)

    def _expose_base_signature(self, model: nn.Module) -> None:
        # Trainer keeps the dataset columns named in ``model.forward``'s signature: show the
        # base model's arguments (plus ``external_adjacency``) instead of ``*args, **kwargs``
        def forward(*args, **kwargs):
            return type(self).forward(self, *args, **kwargs)

        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):
            return
        extra = inspect.Parameter(
            "external_adjacency", inspect.Parameter.KEYWORD_ONLY, default=None
        )
        tail = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        head = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        forward.__signature__ = inspect.Signature(head + [extra] + tail)
        forward.__doc__ = type(self).forward.__doc__
        object.__setattr__(self, "forward", forward)

    # -- hooks -------------------------------------------------------------------------
    def _attach(self, model: nn.Module) -> None:
        capture.register_attention()
        previous = model.config._attn_implementation
        if previous == capture.ATTENTION_NAME:  # config shared with another adapted model
            previous = capture._previous(model.config)
        model.set_attn_implementation(capture.ATTENTION_NAME)
        if model.config._attn_implementation != capture.ATTENTION_NAME:
            raise ValueError(
                f"Sparse-GIN could not set the attention implementation of "
                f"{type(model).__name__} (it stayed {model.config._attn_implementation!r})"
            )
        self._previous_attn = previous
        known = capture.ALL_ATTENTION_FUNCTIONS._global_mapping
        capture.set_previous_implementation(
            model.config, previous if previous in known else "sdpa"
        )
        self._hooks.append(self._backbone.register_forward_pre_hook(
            self._backbone_pre_hook, with_kwargs=True))
        self._hooks.append(self._backbone.register_forward_hook(
            self._backbone_hook, with_kwargs=True))
        for key, adapter in self.sparse_gin_layers.items():
            decoder = self._decoder_layers[int(key)]
            attention = getattr(decoder, self._attn_name)
            # the layer input is read where the layer's first submodule (its input norm)
            # receives it: inside activation checkpointing, so recomputation sees it too
            reader = getattr(decoder, self._residual_reader) if self._residual_reader else decoder
            self._hooks.append(reader.register_forward_pre_hook(
                self._make_residual_hook(adapter), with_kwargs=True))
            self._hooks.append(attention.register_forward_hook(self._make_merge_hook(adapter)))
            capture.set_capture(attention, self._make_capture(adapter), owner=self)

    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for key in self.sparse_gin_layers:
            capture.set_capture(getattr(self._decoder_layers[int(key)], self._attn_name), None)
        capture.set_previous_implementation(self.model.config, None)
        self.model.set_attn_implementation(self._previous_attn)

    def _backbone_pre_hook(self, module, args, kwargs):
        try:
            bound = self._backbone_signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = dict(kwargs)
        extra = bound.get("kwargs", {})
        mask = bound.get("attention_mask")
        cache = bound.get("cache", bound.get("past_key_values", extra.get("past_key_values")))
        if isinstance(mask, Tensor) and mask.dim() != 2:
            raise ValueError(
                "Sparse-GIN needs the 2-D padding mask [B, T] as attention_mask, got shape "
                f"{tuple(mask.shape)}"
            )
        self._padding_mask = mask.bool() if isinstance(mask, Tensor) else None
        self._step = None
        self._fresh = False
        owner = self._cache_ref() if self._cache_ref is not None else None
        past = cache.get_seq_length() if cache is not None else 0
        if cache is None or cache is not owner or past == 0:
            for layer in self.sparse_gin_layers.values():
                layer.reset_cache()
        use_cache = bound.get("use_cache", extra.get("use_cache"))
        # keep node features for later decode steps when a KV cache is (or may be) built
        self._store_features = cache is not None or bool(use_cache) or (
            use_cache is None and not torch.is_grad_enabled()
        )

    def _backbone_hook(self, module, args, kwargs, output):
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        self._cache_ref = weakref.ref(cache) if cache is not None and self._store_features else None
        self._padding_mask = None
        self._step = None

    @staticmethod
    def _make_residual_hook(adapter: SparseGinLayer):
        def hook(module, args, kwargs):
            adapter._residual = args[0] if args else kwargs["hidden_states"]
        return hook

    def _make_capture(self, adapter: SparseGinLayer):
        def build_graph(module, query: Tensor, key: Tensor, kwargs: dict) -> None:
            if adapter.disable_adapters:
                return
            adapter._graph = self._build_graph(module, query, key, kwargs)
        return build_graph

    def _make_merge_hook(self, adapter: SparseGinLayer):
        def hook(module, args, output):
            if adapter.disable_adapters:
                return None
            graph = getattr(adapter, "_graph", None)
            if graph is None:
                raise ValueError(
                    f"Sparse-GIN layer {adapter.layer_idx}: the attention did not run through "
                    "the 'sparse_gin' attention function (unsupported model or attention "
                    "implementation changed after attaching)"
                )
            adapter._graph = None
            attn_out = output[0] if isinstance(output, tuple) else output
            x = adapter._residual + attn_out
            delta = adapter(x, graph, store_features=self._store_features)
            adapter.last_graph = graph if isinstance(graph, DecodeRow) else _detached(graph)
            if isinstance(output, tuple):
                return (attn_out + delta,) + output[1:]
            return attn_out + delta
        return hook

    def _step_constants(self) -> tuple[dict, bool, Tensor | None]:
        """``(graph options, decode fast path allowed, padding mask for the fast path)``,
        the same for every adapted layer of one forward: computed by the first layer and
        reused by the others (reset by the backbone hooks)."""
        config: SparseGinConfig = self.peft_config[self.active_adapter]
        options = dict(
            head_reduction=config.head_reduction, clamp=1.0, sharpen_alpha=config.alpha,
            sharpen_tau=config.tau, threshold=config.epsilon, top_k=config.top_k,
        )
        fast = self._external is None and (
            config.detach_adjacency or not torch.is_grad_enabled()
        )
        mask = self._padding_mask
        # an all-ones padding mask masks nothing: the fast path skips it
        fast_mask = None if mask is None or bool(mask.all()) else mask
        self._step = (options, fast, fast_mask)
        return self._step

    def _build_graph(self, module, query: Tensor, key: Tensor,
                     kwargs: dict) -> AttentionGraph | DecodeRow:
        batch_size, num_queries, num_keys = query.size(0), query.size(2), key.size(2)
        window = kwargs.get("sliding_window")
        if window is not None and num_keys > window:
            raise ValueError(
                f"Sparse-GIN does not reproduce sliding-window attention: {num_keys} keys "
                f"exceed sliding_window={window}"
            )
        mask = self._padding_mask
        if mask is not None and mask.shape != (batch_size, num_keys):
            raise ValueError(
                f"attention_mask must have shape [B, past + T] = [{batch_size}, {num_keys}], "
                f"got {tuple(mask.shape)}"
            )
        options, fast, fast_mask = self._step or self._step_constants()
        scaling = kwargs.get("scaling") or query.size(-1) ** -0.5
        if num_queries == 1 and fast:
            return _decode_step_graph(query, key, scaling, fast_mask, options)
        config: SparseGinConfig = self.peft_config[self.active_adapter]
        offset = num_keys - num_queries
        external = self._external
        if external is not None:
            if external.size(-1) != num_keys:
                raise ValueError(
                    f"external_adjacency covers {external.size(-1)} positions but attention "
                    f"has {num_keys} keys (external adjacency is not supported with a KV cache)"
                )
            external = external[:, offset:]  # the query rows of this forward
        return qk_to_graph(
            query, key, scaling=scaling, attention_mask=mask, chunk_size=config.chunk_size,
            query_offset=offset, detach=config.detach_adjacency, external=external, **options,
        )

    # -- public API ----------------------------------------------------------------------
    def forward(self, *args: Any, labels=None, external_adjacency=None, **kwargs: Any):
        """The base model's forward.

        Args:
            labels: passed on to the base model (named here so that ``Trainer`` knows the
                model computes a loss).
            external_adjacency: optional domain graph added to the attention-derived
                adjacency before sharpening (SPEC §5): a dense ``[B, T, T]`` tensor
                (``A[b, i, j]`` = weight of the edge ``j -> i``) or a COO pair
                ``(edge_index [2, E] in flat ids b * T + t, edge_weight [E])``. Only
                causal (``j <= i``), non-padding entries can become edges.
        """
        if labels is not None:
            kwargs["labels"] = labels
        if external_adjacency is None:
            return self.model(*args, **kwargs)
        self._external = _dense_external(external_adjacency, args, kwargs)
        try:
            return self.model(*args, **kwargs)
        finally:
            self._external = None

    def generate(self, *args: Any, **kwargs: Any):
        """The base model's ``generate`` (the adapter keeps a per-layer feature cache
        tied to the KV cache of the call).

        Raises:
            ValueError: for beam search, which reorders the KV cache behind the adapter.
        """
        config = kwargs.get("generation_config") or self.model.generation_config
        if (kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1) > 1:
            raise ValueError("Sparse-GIN does not support beam search (num_beams > 1)")
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The wrapped base model (with the adapter hooks attached)."""
        return self.model

    @property
    def adapter_layers(self) -> dict[int, SparseGinLayer]:
        """Adapted decoder layer index -> its :class:`SparseGinLayer`."""
        return {int(k): v for k, v in self.sparse_gin_layers.items()}

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable parameters, all parameters)``."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        """Enable the base model's activation (gradient) checkpointing. The adapters run
        inside the checkpointed layers; with ``use_reentrant=True`` the embeddings' output
        is made to require grad so that adapter gradients still flow."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs
        )
        if (activation_checkpointing_kwargs or {}).get("use_reentrant"):
            self.model.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        """Alias of :meth:`activation_checkpointing_enable` (transformers' old name)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    @contextmanager
    def disable_adapter(self):
        """Context manager running the plain base model (bit for bit)."""
        states = {k: layer.disable_adapters for k, layer in self.sparse_gin_layers.items()}
        self._enable_adapter_layers(False)
        try:
            yield
        finally:
            for key, layer in self.sparse_gin_layers.items():
                layer.enable_adapters(not states[key])

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        for layer in self.sparse_gin_layers.values():
            layer.enable_adapters(enabled)

    def unload(self) -> nn.Module:
        """Remove every hook and adapter and return the untouched base model.

        Raises:
            ValueError: if this adapter was already unloaded.
        """
        if "sparse_gin_layers" not in self._modules:
            raise ValueError(
                f"this Sparse-GIN adapter was already unloaded: unload() returned the base "
                f"{type(self.model).__name__}, which carries no adapter any more"
            )
        self._detach()
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad_before.get(name, param.requires_grad))
        if "peft_config" in self.model.__dict__:
            del self.model.__dict__["peft_config"]
        model = self.model
        del self.sparse_gin_layers
        return model

    def merge_and_unload(self, *args, **kwargs):
        """Not available: a GNN cannot be merged into the base weights.

        Raises:
            ValueError: always; use :meth:`unload`.
        """
        raise ValueError("a Sparse-GIN adapter cannot be merged into the base weights; use unload()")

    def delete_adapter(self, adapter_name: str) -> None:
        """Not available (one adapter per model).

        Raises:
            ValueError: always; use :meth:`unload`.
        """
        raise ValueError("Sparse-GIN holds one adapter; use unload() to remove it")

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
        """Learned graph scalars (detached, CPU): ``{"lambda": [L_adapted]}`` plus, for
        ``gnn_type="gin"``, ``{"eps": [L_adapted, num_gnn_layers]}``."""
        adapter = self.active_adapter
        layers = [self.sparse_gin_layers[k] for k in self.sparse_gin_layers]
        out = {"lambda": torch.stack([
            layer.sparse_gin_lambda[adapter].detach().float().cpu() for layer in layers
        ])}
        if self.peft_config[adapter].gnn_type == "gin":
            out["eps"] = torch.stack([
                torch.stack([conv.eps.detach().float().cpu().reshape(())
                             for conv in layer.sparse_gin_gnn[adapter].convs])
                for layer in layers
            ])
        return out

    def adapter_state_dict(
        self, state_dict: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The adapter weights with peft's checkpoint keys (``base_model.sparse_gin_layers...``),
        taken from ``state_dict`` (a full ``self.state_dict()``) when given."""
        state = get_peft_model_state_dict(
            self, state_dict=state_dict, adapter_name=self.active_adapter
        )
        return {SAVED_KEY_PREFIX + k: v.detach().contiguous() for k, v in state.items()}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        overwrite: bool = False,
        *,
        state_dict: dict[str, Tensor] | None = None,
        safe_serialization: bool = True,
        is_main_process: bool = True,
    ) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (peft layout).

        The save is atomic per file and ordered: both files are written to a temporary
        folder inside ``save_directory`` first, then moved into place with
        :func:`os.replace`, weights before config, so a failed save leaves the previous
        files untouched and never a new config beside old weights.

        Saving the same configuration again replaces the weights, as peft does. A folder
        that already holds an adapter of another configuration (another peft method or
        different fields) is refused unless ``overwrite=True``.

        Args:
            save_directory: folder to write to (created if missing).
            overwrite: replace an adapter of another configuration.
            state_dict: a full ``self.state_dict()`` to take the adapter weights from
                (``Trainer`` style); default: the current weights.
            safe_serialization: accepted for peft/``Trainer`` compatibility; the weights
                are always written as safetensors.
            is_main_process: if ``False`` (non-main distributed ranks) nothing is written.

        Raises:
            ValueError: ``save_directory`` is a file, or holds an adapter of another
                configuration and ``overwrite`` is ``False``.
        """
        if not is_main_process:
            return
        if os.path.isfile(save_directory):
            raise ValueError(
                f"save_directory must be a directory, got the file {str(save_directory)!r}"
            )
        config = self.peft_config[self.active_adapter]
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(self.model, "name_or_path", None)
        config_path = os.path.join(save_directory, CONFIG_NAME)
        weights = self.adapter_state_dict(state_dict)
        inference_mode = config.inference_mode
        config.inference_mode = True  # as peft writes it
        staging = None
        try:
            if not overwrite and os.path.exists(config_path):
                new = json.loads(json.dumps(config.to_dict(), default=list))
                _check_same_adapter_config(config_path, new)
            os.makedirs(save_directory, exist_ok=True)
            staging = tempfile.mkdtemp(dir=save_directory, prefix=".sparse_gin_save.")
            save_file(weights, os.path.join(staging, WEIGHTS_NAME), metadata={"format": "pt"})
            config.save_pretrained(staging)
            # weights first: an interruption between the two leaves the old config
            os.replace(os.path.join(staging, WEIGHTS_NAME),
                       os.path.join(save_directory, WEIGHTS_NAME))
            os.replace(os.path.join(staging, CONFIG_NAME), config_path)
        finally:
            config.inference_mode = inference_mode
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        is_trainable: bool = False,
        adapter_name: str = "default",
    ) -> SparseGinModel:
        """Attach the adapter saved in directory ``model_id`` to ``model``.

        Raises:
            ValueError: if the saved weights do not fit ``model`` (another hidden size,
                other decoder layers); ``model`` is left unmodified then.
        """
        config = SparseGinConfig.from_pretrained(str(model_id))
        config.inference_mode = not is_trainable
        state_dict = load_file(os.path.join(model_id, WEIGHTS_NAME))
        adapted = cls(model, config, adapter_name, state_dict=state_dict)  # checked first
        adapted.load_adapter_weights(state_dict)
        if not is_trainable:
            adapted.eval()
        return adapted

    def load_adapter_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load weights saved by :meth:`save_pretrained` (or peft) into the adapter.

        Raises:
            ValueError: on missing or unexpected keys or shapes that do not fit (nothing
                is loaded then).
        """
        adapter = self.active_adapter
        self._check_adapter_state(state_dict)
        expected = {
            self._remove_adapter_name_from_key(f"sparse_gin_layers.{k}", adapter): k
            for k in self.sparse_gin_layers.state_dict()
        }
        with torch.no_grad():
            own = self.sparse_gin_layers.state_dict(keep_vars=True)
            for key, tensor in state_dict.items():
                own[expected[key.removeprefix(SAVED_KEY_PREFIX)]].copy_(tensor)
        self._fresh = False

    def _check_adapter_state(self, state_dict: dict[str, Tensor],
                             partial: bool = False) -> None:
        """Check checkpoint weights (keys as saved, ``base_model.`` prefix optional)
        against the adapter's own: same adapted decoder layers, keys and shapes
        (``partial``: keys missing inside an adapted layer are allowed, as peft allows).

        Raises:
            ValueError: naming the layers, or the key and both shapes, that differ.
        """
        adapter = self.active_adapter
        own = {
            self._remove_adapter_name_from_key(f"sparse_gin_layers.{k}", adapter): v
            for k, v in self.sparse_gin_layers.state_dict().items()
        }
        given = {k.removeprefix(SAVED_KEY_PREFIX): v for k, v in state_dict.items()}
        saved_layers = sorted({int(k.split(".")[1]) for k in given
                               if k.startswith("sparse_gin_layers.")
                               and k.split(".")[1].isdigit()})
        own_layers = sorted(int(k) for k in self.sparse_gin_layers)
        name = type(self.model).__name__
        if saved_layers != own_layers:
            num_layers = len(find_decoder_layers(self.model)[1])
            raise ValueError(
                f"the adapter holds weights for decoder layers {saved_layers}, but this "
                f"{name} ({num_layers} decoder layer{'s' * (num_layers != 1)}) adapts "
                f"layers {own_layers}: it was saved for another base model"
            )
        missing, unexpected = set(own) - set(given), set(given) - set(own)
        if unexpected or (missing and not partial):
            raise ValueError(
                f"adapter weights do not match this model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        for key in sorted(set(given) & set(own)):
            saved, expected = tuple(given[key].shape), tuple(own[key].shape)
            if saved == expected:
                continue
            hidden = getattr(getattr(self.model, "config", None), "hidden_size", None)
            lin_in = next((v for k, v in given.items() if k.endswith(".lin_in.weight")), None)
            saved_hidden = None if lin_in is None else lin_in.shape[-1]
            cause = (
                f"the adapter was saved for a base model with hidden_size={saved_hidden}, "
                f"this {name} has hidden_size={hidden}"
                if saved_hidden is not None and saved_hidden != hidden
                else "the weights do not fit the adapter configuration"
            )
            raise ValueError(
                f"adapter weight {key!r} has shape {saved} in the checkpoint but {expected} "
                f"in this model: {cause}"
            )

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: PeftConfig,
                                           adapter_name: str,
                                           state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """peft's per-method hook before it loads checkpoint weights
        (``PeftModel.from_pretrained`` / ``load_adapter``): refuse weights that do not fit.
        A freshly attached adapter (no forward, no load yet, as inside
        ``PeftModel.from_pretrained``) is unloaded first, leaving the base model as it was.

        Raises:
            ValueError: see :meth:`_check_adapter_state`.
        """
        tuner = next((m for m in model.modules() if isinstance(m, cls)), None)
        if tuner is not None and "sparse_gin_layers" in tuner._modules:
            try:
                tuner._check_adapter_state(state_dict, partial=True)
            except ValueError as error:
                if not tuner._fresh:
                    raise
                tuner.unload()
                raise ValueError(
                    f"{error} (the adapter was removed again; the base model is unchanged)"
                ) from None
            tuner._fresh = False
        return super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(layers={list(self.adapter_layers)}, model={type(self.model).__name__})"


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


def _detached(graph: AttentionGraph) -> AttentionGraph:
    if not graph.edge_weight.requires_grad:
        return graph
    return AttentionGraph(
        edge_index=graph.edge_index, edge_weight=graph.edge_weight.detach(), batch=graph.batch,
        num_nodes=graph.num_nodes, batch_size=graph.batch_size, seq_len=graph.seq_len,
        query_offset=graph.query_offset,
    )


def _decode_step_graph(query: Tensor, key: Tensor, scaling: float, mask: Tensor | None,
                       options: dict) -> AttentionGraph | DecodeRow:
    """:func:`qk_to_graph` for a single query row (a KV-cache decode step) without its
    chunking and argument checks: the same scores, softmax, head reduction, clamp,
    sharpening and threshold. Without ``top_k`` the row stays dense (a
    :class:`DecodeRow`, no edge list); ``top_k`` goes through ``graph.construction``'s
    row sparsifier."""
    B, H, _, d = query.shape
    Hkv, Tk = key.size(1), key.size(2)
    with torch.no_grad():
        # the [B * Hkv] batched product torch.matmul would do, without its reshaping
        scores = torch.bmm(query.reshape(B * Hkv, H // Hkv, d),
                           key.reshape(B * Hkv, Tk, d).transpose(1, 2)).view(B, H, Tk)
        scores = (scores if scores.dtype == torch.float32 else scores.float()).mul_(scaling)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None], torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1)
        if probs.dtype != query.dtype:
            probs = probs.to(query.dtype)
        reduced = _reduce_heads(probs, options["head_reduction"])  # [B, Tk]
        if options["top_k"] is None:
            values = reduced.clamp_(max=options["clamp"]).sub_(options["sharpen_tau"])
            values = values.mul_(options["sharpen_alpha"]).sigmoid_()
            keep = values > options["threshold"]
            if mask is not None:
                keep &= mask & mask[:, -1:]
            return DecodeRow(values.mul_(keep))
        position = torch.full((1,), Tk - 1, device=query.device)
        valid = causal_valid_mask(B, position, Tk, mask)
        rest = {k: v for k, v in options.items() if k != "head_reduction"}
        edge_index, edge_weight = _sparsify_rows(reduced[:, None], valid, position, Tk, **rest)
    return AttentionGraph(
        edge_index=edge_index, edge_weight=edge_weight,
        batch=torch.arange(B, device=query.device).repeat_interleave(Tk),
        num_nodes=B * Tk, batch_size=B, seq_len=Tk, query_offset=Tk - 1,
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
        dense = edge_weight.new_zeros(B * T * T).index_put(
            ((dst // T) * T * T + (dst % T) * T + src % T,), edge_weight, accumulate=True
        ).view(B, T, T)
    else:
        raise ValueError(
            "external_adjacency must be a [B, T, T] tensor or an (edge_index, edge_weight) "
            f"pair, got {type(external).__name__}"
        )
    if not dense.is_floating_point() or not torch.isfinite(dense).all():
        raise ValueError("external_adjacency must hold finite floating point weights")
    return dense

