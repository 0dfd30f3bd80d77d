"""GraphLlama reuses transformers' Llama ``__init__`` bodies without building throw-away
modules; the adjacency's ``adjacency_top_k`` is independent of generation's ``top_k``."""

import json
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaModel,
)
from transformers.monkey_patching import (
    apply_patches,
    register_patch_mapping,
    unregister_patch_mapping,
)

from pyg_transformer import GINAttention, GraphLlamaForCausalLM, PNAAttention
from pyg_transformer.compat import reuse_init

from graph_llama_helpers import tiny_config

ATTENTIONS = {"gin": GINAttention, "pna": PNAAttention, "standard": LlamaAttention}


@contextmanager
def module_census():
    """Every module that gets a submodule, parameter or buffer while the block runs
    (torch's global registration hooks), in order; strong references, so ids stay
    unique."""
    seen: dict[int, nn.Module] = {}

    def record(module, name, value):
        for candidate in (module, value):
            if isinstance(candidate, nn.Module):
                seen.setdefault(id(candidate), candidate)

    handles = [register(record) for register in (
        register_module_module_registration_hook,
        register_module_parameter_registration_hook,
        register_module_buffer_registration_hook,
    )]
    modules: list[nn.Module] = []
    try:
        yield modules
    finally:
        for handle in handles:
            handle.remove()
        modules.extend(seen.values())


def thrown_away(built: list[nn.Module], model: nn.Module) -> list[str]:
    kept = {id(module) for module in model.modules()}
    return [type(module).__name__ for module in built if id(module) not in kept]


def test_census_sees_a_replaced_attention():
    """The census is not blind: replacing ``self_attn`` after ``super().__init__`` (the
    old pattern) shows up as a thrown-away ``LlamaAttention``."""

    class ReplacingLayer(LlamaDecoderLayer):
        def __init__(self, config, layer_idx):
            super().__init__(config, layer_idx)
            self.self_attn = GINAttention(config, layer_idx)

    config = tiny_config(attention_type="gin")
    with module_census() as built:
        layer = ReplacingLayer(config, 0)
    assert Counter(thrown_away(built, layer)) == {"LlamaAttention": 1, "Linear": 4}


@pytest.mark.parametrize("attention_type", ["gin", "pna", "standard"])
@pytest.mark.parametrize("how", ["init", "from_config", "from_pretrained"])
def test_no_module_is_built_and_thrown_away(tmp_path, attention_type, how):
    config = tiny_config(attention_type=attention_type, pna_blend=attention_type == "pna")
    if how == "from_pretrained":  # transformers builds the model on the meta device
        GraphLlamaForCausalLM(config).save_pretrained(tmp_path)
    with module_census() as built:
        if how == "init":
            model = GraphLlamaForCausalLM(config)
        elif how == "from_config":
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert thrown_away(built, model) == []
    counts = Counter(type(module) for module in built)
    layers = config.num_hidden_layers
    assert counts[ATTENTIONS[attention_type]] == layers
    assert counts[LlamaAttention] == (layers if attention_type == "standard" else 0)
    assert counts[LlamaDecoderLayer] == counts[LlamaModel] == counts[LlamaForCausalLM] == 0
    assert all(type(layer.self_attn) is ATTENTIONS[attention_type]
               for layer in model.model.layers)


def test_plain_llama_is_unaffected():
    GraphLlamaForCausalLM(tiny_config(attention_type="gin"))
    assert modeling_llama.LlamaAttention is LlamaAttention
    assert modeling_llama.LlamaDecoderLayer is LlamaDecoderLayer
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    assert type(llama.model) is LlamaModel
    assert type(llama.model.layers[0]) is LlamaDecoderLayer
    assert type(llama.model.layers[0].self_attn) is LlamaAttention


def test_transformers_class_patches_still_reach_the_reused_bodies():
    """transformers' ``apply_patches`` (run by ``from_pretrained``) swaps classes in
    ``modeling_llama``; the reused ``__init__`` bodies look them up there."""

    class PatchedMLP(LlamaMLP):
        pass

    register_patch_mapping({"LlamaMLP": PatchedMLP})
    try:
        with apply_patches():
            model = GraphLlamaForCausalLM(tiny_config(attention_type="gin"))
    finally:
        unregister_patch_mapping(["LlamaMLP"])
    assert all(type(layer.mlp) is PatchedMLP for layer in model.model.layers)
    assert all(type(layer.self_attn) is GINAttention for layer in model.model.layers)
    assert modeling_llama.LlamaMLP is LlamaMLP


def test_reuse_refuses_a_name_the_parent_does_not_build():
    with pytest.raises(ImportError, match=r"LlamaModel.__init__ no longer instantiates "
                                          r"\['LlamaAttention'\]"):
        reuse_init(LlamaModel, LlamaAttention=GINAttention)


def finite_per_row(scores: tuple[torch.Tensor, ...]) -> set[int]:
    return {int(n) for step in scores for n in torch.isfinite(step).sum(-1)}


@pytest.mark.parametrize("attention_type", ["gin", "pna"])
def test_sampling_top_k_is_independent_of_the_adjacency_k(attention_type):
    torch.manual_seed(0)
    model = GraphLlamaForCausalLM(tiny_config(
        attention_type=attention_type, adjacency_activation="top_k", adjacency_top_k=3,
    )).eval()
    plain = GraphLlamaForCausalLM(tiny_config(attention_type=attention_type)).eval()
    assert model.generation_config.to_diff_dict() == plain.generation_config.to_diff_dict()
    assert "top_k" not in model.generation_config.to_diff_dict()
    ids = torch.randint(3, 64, (2, 5))
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": True,
              "output_scores": True, "return_dict_in_generate": True}
    # the scores after the sampling warpers: top_k=5 leaves 5 finite logits per row
    assert finite_per_row(model.generate(ids, top_k=5, **kwargs).scores) == {5}
    # without top_k: generation's default, as for a model without an adjacency k
    default = finite_per_row(plain.generate(ids, **kwargs).scores)
    assert finite_per_row(model.generate(ids, **kwargs).scores) == default != {3}
    greedy = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=4, min_new_tokens=4,
                                      do_sample=True, top_k=1), greedy)
    assert model.config.adjacency_top_k == 3  # generation left the graph option alone


def test_model_saved_with_the_old_top_k_name_loads(tmp_path):
    torch.manual_seed(0)
    model = GraphLlamaForCausalLM(tiny_config(
        attention_type="gin", adjacency_activation="top_k", adjacency_top_k=2,
    )).eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved["top_k"] = saved.pop("adjacency_top_k")  # what the code before the rename wrote
    path.write_text(json.dumps(saved))
    with pytest.warns(FutureWarning, match="`top_k` is deprecated"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.adjacency_top_k == 2
    assert "top_k" not in loaded.generation_config.to_diff_dict()
    ids = torch.randint(3, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
