"""Every network type on real-size SD 1.5 and SDXL (meta device): each exported module has
sd-scripts' name, the ResNet convs of --conv-rank included, and each type's tensors are the
LyCORIS set for its layer.

Names are checked as tests/test_kohya_fullsize.py checks LoRA: SD 1.5 against the written
rule, SDXL through diffusers' own kohya converter (which maps every LoRA key back to the
module it came from) and keys sd-scripts is known to write for LoCon. LoHa, LoKr and DoRA
adapt the same layers, so their module names must be the LoCon file's.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from test_kohya_fullsize import FAMILIES, canonical, diffusers_mapping, rule_name
from test_networks_support import peft_layers

from studio.formats.kohya import to_kohya_state_dict
from studio.lora.inject import extract_lora, inject_network
from studio.lora.networks import NetworkSpec
from studio.models.configs import build_meta_components

RANK, ALPHA, CONV_RANK, CONV_ALPHA = 4, 2.0, 2, 1.0
# sd-scripts' full coverage plus the ResNet blocks: per ResnetBlock2D conv1, conv2, time_emb_proj
# (+ conv_shortcut where channels change), one conv per Downsample2D / Upsample2D.
UNET_MODULES = {
    "sd15": 192 + 22 * 3 + 14 + 6,  # 22 resnets, 14 shortcuts, 3 + 3 resamplers
    "sdxl": 722 + 17 * 3 + 11 + 4,  # 17 resnets, 11 shortcuts, 2 + 2 resamplers
}
SDXL_LOCON_KEYS = {  # sd-scripts' SGM names of LoCon modules (reference notes 1.2) -> down shape
    "lora_unet_input_blocks_1_0_in_layers_2": (CONV_RANK, 320, 3, 3),
    "lora_unet_input_blocks_1_0_out_layers_3": (CONV_RANK, 320, 3, 3),
    "lora_unet_input_blocks_1_0_emb_layers_1": (RANK, 1280),
    "lora_unet_input_blocks_4_0_skip_connection": (RANK, 320, 1, 1),
    "lora_unet_input_blocks_3_0_op": (CONV_RANK, 320, 3, 3),
    "lora_unet_output_blocks_2_2_conv": (CONV_RANK, 1280, 3, 3),
    "lora_unet_middle_block_0_in_layers_2": (CONV_RANK, 1280, 3, 3),
}
SPECS = {
    "locon": NetworkSpec("locon", RANK, ALPHA, CONV_RANK, CONV_ALPHA),
    "loha": NetworkSpec("loha", RANK, ALPHA, CONV_RANK, CONV_ALPHA),
    "lokr": NetworkSpec("lokr", RANK, ALPHA, CONV_RANK, CONV_ALPHA),
    "dora": NetworkSpec("locon", RANK, ALPHA, CONV_RANK, CONV_ALPHA, dora=True),
}
ROLES = {
    "locon": [{"lora_down.weight", "lora_up.weight", "alpha"}],
    "dora": [{"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}],
    "loha": [{"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}],
    "lokr": [{"lokr_w1", "lokr_w2", "alpha"}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}],
}


@functools.cache
def exported(model: str, network: str):
    components = build_meta_components(model)
    inject_network(components, FAMILIES[model], SPECS[network], "full", True)
    layers = peft_layers(components)
    state = to_kohya_state_dict(extract_lora(components), components, FAMILIES[model])
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, _, role = key.partition(".")
        modules.setdefault(name, {})[role] = value
    return components, layers, modules, state


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_locon_names_are_sd_scripts_names_convs_included(model):
    components, layers, modules, state = exported(model, "locon")
    family = FAMILIES[model]
    unet = [key for key in layers if key[0] == "unet"]
    assert len(unet) == UNET_MODULES[model]
    if model == "sd15":
        assert set(modules) == {rule_name(family, c, p) for c, p in layers}
    else:
        for name, down_shape in SDXL_LOCON_KEYS.items():
            assert tuple(modules[name]["lora_down.weight"].shape) == down_shape, name
        mapping, _ = diffusers_mapping(state, components["unet"].config)
        assert len(mapping) == len(layers)
        for (component, path), name in mapping.items():
            assert (component, path if component == "unet" else path.removeprefix("text_model.")) in {
                (c, p if c == "unet" else p.removeprefix("text_model.")) for c, p in layers
            }, name
        assert {canonical(c, p) for c, p in mapping} == {canonical(c, p) for c, p in layers}
    for (_, path), layer in layers.items():
        base = layer.get_base_layer()
        spatial = isinstance(base, torch.nn.Conv2d) and base.kernel_size != (1, 1)
        rank, alpha = (CONV_RANK, CONV_ALPHA) if spatial else (RANK, ALPHA)
        assert layer.r["default"] == rank and layer.lora_alpha["default"] == alpha, path
    for parts in modules.values():
        down = parts["lora_down.weight"]
        assert parts["alpha"].item() == (CONV_ALPHA if down.shape[0] == CONV_RANK else ALPHA)


@pytest.mark.parametrize("network", ["loha", "lokr", "dora"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_every_network_type_writes_the_locon_modules_with_its_lycoris_tensors(model, network):
    _, locon_layers, locon_modules, _ = exported(model, "locon")
    _, layers, modules, _ = exported(model, network)
    assert set(layers) == set(locon_layers)
    assert set(modules) == set(locon_modules)
    for name, parts in modules.items():
        assert set(parts) in ROLES[network], name
        weight_shape = tuple(locon_modules[name]["lora_up.weight"].shape[:1]) + tuple(
            locon_modules[name]["lora_down.weight"].shape[1:]
        )
        out, flat_in = weight_shape[0], math.prod(weight_shape[1:])
        if network == "loha":
            assert parts["hada_w1_a"].shape[0] == out and math.prod(parts["hada_w1_b"].shape[1:]) == flat_in
        elif network == "lokr":
            w1 = parts["lokr_w1"].shape
            w2 = parts["lokr_w2"].shape if "lokr_w2" in parts else (
                parts["lokr_w2_a"].shape[0], math.prod(parts["lokr_w2_b"].shape[1:])
            )  # fmt: skip
            assert (w1[0] * w2[0], w1[1] * math.prod(w2[1:])) == (out, flat_in), name
        else:
            scale = parts["dora_scale"]
            assert tuple(scale.shape) == (out, *[1] * (len(weight_shape) - 1)), name
        assert parts["alpha"].dim() == 0 and parts["alpha"].dtype == torch.float32
