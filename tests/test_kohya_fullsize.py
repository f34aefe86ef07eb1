"""kohya export on real-size SD 1.5, SD 2.1 and SDXL (meta device: real names and shapes, no weights).

Names are checked three ways, none of them through studio.formats.kohya_names: re-derived
here from the written rules (SD 1.x/2.x and every text encoder), a hand-written list of
keys sd-scripts is known to write for SDXL, and diffusers' own kohya -> diffusers converter,
which must map every exported key back to the module it came from.
"""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers.loaders.lora_conversion_utils import (
    _convert_non_diffusers_lora_to_diffusers,
    _maybe_map_sgm_blocks_to_diffusers,
)
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from peft.tuners.lora import LoraLayer
from torch import nn

from studio.formats.kohya import to_kohya_state_dict
from studio.lora.inject import inject_lora
from studio.lora.targets import PRESETS, all_targets
from studio.lora.tensors import LoraTensors
from studio.models.configs import build_meta_components
from studio.models.family import ModelFamily

RANK, ALPHA = 4, 2.0
FAMILIES = {"sd15": ModelFamily.SD1, "sd21": ModelFamily.SD2, "sdxl": ModelFamily.SDXL}
SHORT = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}

# (model, preset) -> modules per component, as sd-scripts prints them ("create LoRA for ...")
COUNTS = {
    ("sd15", "full"): {"unet": 192, "text_encoder": 72},
    ("sd15", "attn"): {"unet": 128, "text_encoder": 48},
    ("sd15", "cross-attn"): {"unet": 64, "text_encoder": 48},
    ("sd21", "full"): {"unet": 192, "text_encoder": 138},  # 23 OpenCLIP-H layers x 6
    ("sd21", "attn"): {"unet": 128, "text_encoder": 92},
    ("sd21", "cross-attn"): {"unet": 64, "text_encoder": 92},
    ("sdxl", "full"): {"unet": 722, "text_encoder": 72, "text_encoder_2": 192},
    ("sdxl", "attn"): {"unet": 560, "text_encoder": 48, "text_encoder_2": 128},
    ("sdxl", "cross-attn"): {"unet": 280, "text_encoder": 48, "text_encoder_2": 128},
}
# LoRA parameters per unit of rank with sd-scripts' default coverage (reference notes, 1.3)
PARAMS_PER_RANK = {
    "sd15": {"unet": 423_936, "text_encoder": 165_888},
    "sdxl": {"unet": 2_659_840, "text_encoder": 165_888, "text_encoder_2": 737_280},
}
# keys sd-scripts writes (SGM UNet names for SDXL) -> down shape; SD 1.x proj_in is a 1x1 conv (4-D)
KNOWN_KEYS = {
    ("sdxl", "full"): {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (RANK, 640),
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2": (RANK, 5120),
        "lora_unet_output_blocks_0_1_proj_in": (RANK, 1280),
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k": (RANK, 2048),
        "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0": (RANK, 640),
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_0_proj": (RANK, 1280),
        "lora_te2_text_model_encoder_layers_31_mlp_fc2": (RANK, 5120),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (RANK, 768),
    },
    ("sdxl", "attn"): {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (RANK, 640)},
    ("sdxl", "cross-attn"): {"lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k": (RANK, 2048)},
    ("sd15", "full"): {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (RANK, 768),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (RANK, 320, 1, 1),
        "lora_unet_mid_block_attentions_0_proj_in": (RANK, 1280, 1, 1),
        "lora_unet_up_blocks_3_attentions_2_proj_out": (RANK, 320, 1, 1),
    },
    ("sd21", "full"): {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (RANK, 320),  # Linear in SD 2.x
        "lora_te_text_model_encoder_layers_22_mlp_fc2": (RANK, 4096),
    },
}
MODEL_PARAMS = {  # published parameter counts of the real models (reference notes, 3.1 / 3.2)
    "sd15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sdxl": {
        "unet": 2_567_463_684,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
        "vae": 83_653_863,
    },
}


def rule_name(family: ModelFamily, component: str, path: str) -> str:
    """The kohya rule for everything but SDXL's UNet: prefix + path with dots as underscores."""
    if component == "unet":
        return "lora_unet_" + path.replace(".", "_")
    if family is ModelFamily.SDXL:
        prefix = "lora_te1" if component == "text_encoder" else "lora_te2"
    else:
        prefix = "lora_te"
    path = path if path.startswith("text_model.") else "text_model." + path
    return f"{prefix}_{path.replace('.', '_')}"


def peft_layers(components) -> dict[tuple[str, str], LoraLayer]:
    return {
        (component, path): module
        for component, model in components.items()
        for path, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def diffusers_mapping(state, unet_config) -> tuple[dict[tuple[str, str], str], dict[str, float]]:
    """``{(component, diffusers path): kohya name}`` as diffusers' own kohya loader converts the keys.

    Runs the conversions ``load_lora_weights`` runs; each module's tensors are replaced by a
    one-element tensor holding its index, so the renamed keys can be traced back to ours.
    """
    names = sorted({key.split(".", 1)[0] for key in state})
    index = {name: i for i, name in enumerate(names)}
    marked = {
        key: value if key.endswith(".alpha") else torch.tensor([float(index[key.split(".", 1)[0]])])
        for key, value in state.items()
    }
    marked = _maybe_map_sgm_blocks_to_diffusers(marked, unet_config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(marked)
    mapping: dict[tuple[str, str], str] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        part = {
            k.removeprefix(f"{component}."): v for k, v in converted.items() if k.startswith(f"{component}.")
        }
        if not part:
            continue
        if component == "unet":
            part = convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        for key, marker in part.items():
            if ".lora_A." in key:
                mapping[(component, key.split(".lora_A.")[0])] = names[int(marker.item())]
    return mapping, alphas


def canonical(component: str, path: str) -> str:
    return path if component == "unet" or path.startswith("text_model.") else "text_model." + path


@functools.cache
def injected(model: str) -> tuple[dict, dict[tuple[str, str], LoraLayer]]:
    """Meta components with peft's LoRA on every ``full`` target (a superset of the other presets)."""
    components = build_meta_components(model)
    inject_lora(components, FAMILIES[model], rank=RANK, alpha=ALPHA, preset="full", train_text_encoder=True)
    return components, peft_layers(components)


@pytest.fixture(
    scope="module", params=[(m, p) for m in FAMILIES for p in PRESETS], ids=lambda mp: f"{mp[0]}-{mp[1]}"
)
def exported(request):
    model, preset = request.param
    family = FAMILIES[model]
    components, all_layers = injected(model)
    wanted = all_targets(build_meta_components(model), family, preset, train_text_encoder=True)
    layers = {(c, p): all_layers[(c, p)] for c, paths in wanted.items() for p in paths}
    lora = {
        key: LoraTensors(
            layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_alpha["default"]
        )
        for key, layer in layers.items()
    }
    state = to_kohya_state_dict(lora, components, family)
    mapping, alphas = diffusers_mapping(state, components["unet"].config)
    return model, preset, family, layers, state, mapping, alphas


def test_full_size_configs_have_the_published_sizes():
    for model, expected in MODEL_PARAMS.items():
        components = build_meta_components(model, with_vae=True)
        counted = {name: sum(p.numel() for p in part.parameters()) for name, part in components.items()}
        assert counted == expected, model
        assert all(p.device.type == "meta" for part in components.values() for p in part.parameters())
    sd21 = build_meta_components("sd21")
    assert sd21["unet"].config.use_linear_projection and sd21["unet"].config.cross_attention_dim == 1024
    assert (
        sd21["text_encoder"].config.num_hidden_layers == 23
        and sd21["text_encoder"].config.hidden_size == 1024
    )


def test_exactly_three_tensors_per_module_with_real_alpha(exported):
    model, preset, _, layers, state, _, _ = exported
    names = {key.split(".", 1)[0] for key in state}
    assert len(names) == len(layers) == sum(COUNTS[(model, preset)].values())
    assert set(state) == {f"{n}.{s}" for n in names for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    for name in names:
        alpha = state[f"{name}.alpha"]
        assert alpha.dim() == 0 and alpha.dtype == torch.float32 and alpha.item() == ALPHA
        assert state[f"{name}.lora_down.weight"].dtype == torch.float16
        assert state[f"{name}.lora_down.weight"].shape[0] == RANK


def test_module_counts_per_component_match_sd_scripts(exported):
    model, preset, family, layers, state, _, _ = exported
    prefixes = {"unet": "lora_unet_"}
    if family is ModelFamily.SDXL:
        prefixes.update(text_encoder="lora_te1_", text_encoder_2="lora_te2_")
    else:
        prefixes["text_encoder"] = "lora_te_"
    counted = {c: sum(k.startswith(p) and k.endswith(".alpha") for k in state) for c, p in prefixes.items()}
    assert counted == COUNTS[(model, preset)]
    if preset == "full" and model in PARAMS_PER_RANK:  # file size: LoRA parameters per unit of rank
        per_rank = {c: 0 for c in prefixes}
        for key, tensor in state.items():
            if not key.endswith(".alpha"):
                component = next(c for c, p in prefixes.items() if key.startswith(p))
                per_rank[component] += tensor.numel() // RANK
        assert per_rank == PARAMS_PER_RANK[model]


def test_names_follow_the_kohya_rules(exported):
    model, preset, family, layers, state, _, _ = exported
    names = {key.split(".", 1)[0] for key in state}
    for component, path in layers:
        if component != "unet" or family is not ModelFamily.SDXL:
            assert rule_name(family, component, path) in names, (component, path)
    for known, down in KNOWN_KEYS.get((model, preset), {}).items():
        assert tuple(state[f"{known}.lora_down.weight"].shape) == down, known
        up = tuple(state[f"{known}.lora_up.weight"].shape)
        assert up[1] == RANK and (up[2:] == (1, 1) if len(down) == 4 else len(up) == 2), known
    if family is ModelFamily.SDXL:
        assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)


def test_diffusers_converter_maps_every_key_back_to_its_module(exported):
    _, _, family, layers, _, mapping, alphas = exported
    assert set(mapping) == {(component, canonical(component, path)) for component, path in layers}
    assert len(set(mapping.values())) == len(mapping)
    assert len(alphas) == len(layers) and set(alphas.values()) == {ALPHA}
    if family is not ModelFamily.SDXL:
        assert all(name == rule_name(family, c, p) for (c, p), name in mapping.items())


def test_shapes_follow_the_base_layer(exported):
    _, _, _, layers, state, mapping, _ = exported
    for (component, path), layer in layers.items():
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv2d):
            down, up = (RANK, base.in_channels, *base.kernel_size), (base.out_channels, RANK, 1, 1)
        else:
            down, up = (RANK, base.in_features), (base.out_features, RANK)
        name = mapping[(component, canonical(component, path))]
        assert tuple(state[f"{name}.lora_down.weight"].shape) == down, name
        assert tuple(state[f"{name}.lora_up.weight"].shape) == up, name
