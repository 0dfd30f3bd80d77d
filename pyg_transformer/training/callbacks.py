"""Trainer callbacks that record the learned graph scalars (alpha, eps, lambda) per layer."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from pyg_transformer.compat import COMPILED_MODULE_CHILD


def find_graph_parameters(model) -> dict[str, torch.Tensor] | None:
    r"""``model.graph_parameters()`` of a model, an adapter-wrapped model or a DDP/compiled
    wrapper (searched through ``module``, torch.compile's original module, ``base_model``,
    ``model``), or ``None`` when nothing exposes it."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        current = stack.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        method = getattr(type(current), "graph_parameters", None)
        if callable(method):
            return current.graph_parameters()
        children = (dict(current.named_children())
                    if isinstance(current, torch.nn.Module) else {})
        for name in ("module", COMPILED_MODULE_CHILD, "base_model", "model"):
            child = current.__dict__.get(name)
            stack.append(children.get(name) if child is None else child)
    return None


def graph_scalars(parameters: dict[str, torch.Tensor]) -> dict[str, float]:
    r"""Flatten ``{"lambda": [L], "eps": [L, H]}`` into ``{"lambda/layer_0": float, ...}``.

    Dim 0 is the layer; a layer's remaining entries are averaged (``eps/layer_l`` is the
    mean of the ``H`` per-head values)."""
    scalars = {}
    for name, value in parameters.items():
        value = torch.as_tensor(value).detach().to("cpu", torch.float64)
        if value.dim() == 0:
            scalars[name] = float(value)
            continue
        per_layer = value.reshape(value.size(0), -1).mean(dim=1)
        for layer, v in enumerate(per_layer.tolist()):
            scalars[f"{name}/layer_{layer}"] = v
    return scalars


class GraphParameterCallback(TrainerCallback):
    r"""Log the model's per-layer graph scalars at the start and at every logging step.

    The model (or the adapter-wrapped model) must expose
    ``graph_parameters() -> dict[str, Tensor]`` (dim 0 = layer: ``layer_l`` is the
    ``l``-th entry, i.e. the ``l``-th *adapted* layer of an adapter; an empty dict, as from
    a standard-attention baseline, logs nothing). At ``on_train_begin``
    (step 0) and at every ``on_log`` the scalars of :func:`graph_scalars`
    (e.g. ``"lambda/layer_3"``) are

    * appended to :attr:`history` as ``{"step": global_step, **scalars}`` (one entry per
      step: an evaluation logged at the same step replaces it),
    * added to the current ``logs`` and to ``state.log_history[-1]``, so they are saved in
      ``trainer_state.json`` and reach callbacks that run after this one.

    Use :func:`pyg_transformer.viz.plot_lambda_over_training` to draw :attr:`history`.

    Args:
        require: raise a ``ValueError`` at the start of training when the model exposes no
            ``graph_parameters`` (default); with ``False`` such models log nothing.
    """

    def __init__(self, require: bool = True):
        self.require = require
        #: ``[{"step": int, "lambda/layer_0": float, ...}]``, one entry per logged step.
        self.history: list[dict[str, Any]] = []

    def _record(self, state, model) -> dict[str, float]:
        parameters = find_graph_parameters(model) if model is not None else None
        if parameters is None:
            return {}
        scalars = graph_scalars(parameters)
        if not scalars:  # e.g. a standard-attention baseline: nothing to log
            return {}
        entry = {"step": int(state.global_step), **scalars}
        if self.history and self.history[-1]["step"] == entry["step"]:
            self.history[-1] = entry
        else:
            self.history.append(entry)
        return scalars

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.require and (model is None or find_graph_parameters(model) is None):
            raise ValueError(
                f"{type(model).__name__} exposes no graph_parameters(); GraphParameterCallback "
                "needs a graph-aware model or adapter (or pass require=False)")
        self._record(state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        scalars = self._record(state, model)
        if logs is not None:
            logs.update(scalars)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(scalars)


class ConciseProgressCallback(ProgressCallback):
    r"""Trainer's progress bar, kept to what a person reads while training runs: the
    training loss in the bar's postfix and one line per evaluation
    (``step 40: eval loss 2.3170, perplexity 10.145``). Evaluation gets no progress bar of
    its own, and the per-layer graph scalars (``lambda/layer_3``, ...) are not printed:
    they stay in ``log_history``, the results and the figures.

    Use it in place of transformers' ``ProgressCallback``::

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ConciseProgressCallback)
    """

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)
        if "eval_loss" in logs:
            loss = float(logs["eval_loss"])
            perplexity = math.exp(loss) if loss < 700 else float("inf")
            self.training_bar.write(f"step {state.global_step}: eval loss {loss:.4f}, "
                                    f"perplexity {perplexity:.3f}")
