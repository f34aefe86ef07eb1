"""Network types (--network lora|locon|loha|lokr, --dora, --conv-rank): peft trains them, the kohya /
LyCORIS file holds them, the studio's own loader and the mixer give back the very ΔW peft computes.

References: peft's ``get_delta_weight`` (the trained layer itself), LyCORIS' file rules (alpha /
rank; a LoKr of two whole matrices at scale 1; ``dora_scale`` on the output axis, ``wd_on_out``)
and kohya's ``ss_network_module`` / ``ss_network_args``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_networks_support import peft_layers, sd1_kohya_name

from studio.adapters import load_adapter
from studio.cli import main
from studio.config import TrainConfig
from studio.errors import StudioError
from studio.formats.diffusers_format import save_diffusers_lora
from studio.formats.kohya import save_kohya
from studio.lora.inject import extract_lora, inject_network, set_lora_enabled
from studio.lora.networks import NetworkSpec
from studio.lora.targets import conv_block_targets
from studio.mixer import BlendEngine, BlendItem
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline

SPECS = {  # rank 4 makes LoKr's factors whole matrices on the tiny 32-wide layers; conv rank 2 factors them
    "lora": NetworkSpec("lora", 4, 3.0),
    "locon": NetworkSpec("locon", 4, 3.0, conv_rank=2, conv_alpha=1.5),
    "loha": NetworkSpec("loha", 4, 3.0, conv_rank=2, conv_alpha=1.5),
    "lokr": NetworkSpec("lokr", 4, 3.0, conv_rank=2, conv_alpha=1.5),
    "lokr-factored": NetworkSpec("lokr", 2, 3.0),
    "lokr-factor-2": NetworkSpec("lokr", 2, 3.0, lokr_factor=2),  # w1 2x2 (balanced: 4x4 to 16x8)
}


def trained_like(family: ModelFamily, spec: NetworkSpec, seed: int = 0):
    """A tiny pipeline with ``spec`` on the ``full`` layers, every adapter tensor random (as if trained)."""
    pipe = build_tiny_pipeline(family, seed=0)
    inject_network(pipe.components, family, spec, "full", True)
    generator = torch.Generator().manual_seed(seed)
    layers = peft_layers(pipe.components)
    with torch.no_grad():
        for layer in layers.values():
            for param in layer.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + param)
    return pipe, layers


# SD 1.x for every type; SDXL (two text encoders, SGM names) for the LyCORIS types.
ROUND_TRIPS = [(ModelFamily.SD1, name) for name in SPECS] + [
    (ModelFamily.SDXL, "loha"),
    (ModelFamily.SDXL, "lokr"),
]


def _export(path, pipe, family):
    """The trained adapter of ``pipe`` as an fp32 kohya file (no rounding to compare through)."""
    return save_kohya(path, extract_lora(pipe.components), pipe.components, family, {}, dtype=torch.float32)


@pytest.mark.parametrize(("family", "name"), ROUND_TRIPS, ids=lambda v: getattr(v, "value", v))
def test_each_network_round_trips_through_the_studio_loader_and_the_mixer(tmp_path, family, name):
    spec = SPECS[name]
    pipe, layers = trained_like(family, spec)
    path = _export(tmp_path / "a.safetensors", pipe, family)
    fresh = build_tiny_pipeline(family, seed=0)
    adapter = load_adapter(path, fresh.components, family, strict=True)
    assert set(adapter.layers) == set(layers)
    kind = spec.network if spec.network in ("loha", "lokr") else "lora"
    assert adapter.report.kinds == {kind: len(layers)}
    if spec.has_convs:  # the ResNet 3x3 convs are in, at the conv rank
        convs = [key for key, layer in layers.items() if key[1].endswith("resnets.0.conv1")]
        assert convs and all(layers[key].r["default"] == spec.conv_rank for key in convs)
    if spec.lokr_factor:  # LyCORIS' factor is the small Kronecker matrix's side (1 where a width is 1)
        assert {tuple(layer.lokr_w1["default"].shape) for layer in layers.values()} == {
            (2, 2),
            (1, 2),
            (2, 1),
        }
    if name == "lokr":  # both LoKr factors whole on the linears: LyCORIS' scale-1 rule applies
        whole = [k for k, layer in layers.items() if "default" in getattr(layer, "lokr_w2", {})]
        assert whole and any("default" in layer.lokr_w2_a for layer in layers.values())

    originals = {key: layer.get_base_layer().weight.detach().clone() for key, layer in layers.items()}
    engine = BlendEngine(fresh.components)
    engine.set_blend([BlendItem(adapter)])
    for key, layer in layers.items():
        expected = layer.get_delta_weight("default").detach()
        scale = expected.abs().max().item()
        assert scale > 0, key
        from_file = adapter.layers[key].delta(tuple(expected.shape))
        assert (from_file - expected).abs().max().item() <= 1e-6 * scale, key
        mixed = fresh.components[key[0]].get_submodule(key[1]).weight.detach() - originals[key]
        assert (mixed - expected).abs().max().item() <= 1e-5 * scale + 1e-6, key


def lycoris_weight_decompose(
    weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor
) -> torch.Tensor:
    """LyCORIS' ``apply_weight_decompose`` with ``wd_on_out``: (W + ΔW) · dora_scale / ‖W + ΔW‖ per output."""
    merged = weight + delta
    norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *[1] * (merged.dim() - 1))
    return merged * (dora_scale / norm)


def test_dora_is_written_as_lycoris_dora_scale_on_the_output_axis(tmp_path):
    family = ModelFamily.SD1
    spec = NetworkSpec("locon", 4, 3.0, conv_rank=2, conv_alpha=1.5, dora=True)
    pipe, layers = trained_like(family, spec)
    path = _export(tmp_path / "d.safetensors", pipe, family)
    state = load_file(str(path))
    modules = {key.split(".", 1)[0] for key in state}
    assert len(modules) == len(layers)
    assert {key.split(".", 1)[1] for key in state} == {
        "lora_down.weight",
        "lora_up.weight",
        "alpha",
        "dora_scale",
    }
    checked = set()
    for (component, layer_path), layer in layers.items():
        base = layer.get_base_layer()
        name = sd1_kohya_name(component, layer_path)
        scale, down, up = (state[f"{name}.{r}"] for r in ("dora_scale", "lora_down.weight", "lora_up.weight"))
        out = base.weight.shape[0]
        assert tuple(scale.shape) == (out, *[1] * (base.weight.dim() - 1)), name
        torch.testing.assert_close(scale.flatten(), layer.lora_magnitude_vector["default"].weight.flatten())
        # The file, read by LyCORIS' rule, makes the weight peft's layer computes with.
        delta = (
            (up.flatten(1) @ down.flatten(1)).reshape(base.weight.shape)
            * state[f"{name}.alpha"]
            / down.shape[0]
        )
        weight = lycoris_weight_decompose(base.weight.detach(), delta, scale)
        if isinstance(base, torch.nn.Linear) and "linear" not in checked:
            x = torch.randn(3, base.in_features)
            expected = F.linear(x, weight, base.bias)
        elif isinstance(base, torch.nn.Conv2d) and base.kernel_size == (3, 3) and "conv" not in checked:
            x = torch.randn(1, base.in_channels, 8, 8)
            expected = F.conv2d(x, weight, base.bias, base.stride, base.padding)
        else:
            continue
        checked.add("linear" if isinstance(base, torch.nn.Linear) else "conv")
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert checked == {"linear", "conv"}


@pytest.mark.parametrize(
    ("overrides", "module", "args"),
    [
        ({}, "networks.lora", {}),
        ({"network": "locon"}, "networks.lora", {"conv_dim": "4", "conv_alpha": "2"}),
        ({"conv_rank": 8, "conv_alpha": 1.0}, "networks.lora", {"conv_dim": "8", "conv_alpha": "1"}),
        ({"network": "loha"}, "lycoris.kohya", {"algo": "loha"}),
        (
            {"network": "lokr", "conv_rank": 2},
            "lycoris.kohya",
            {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1"},
        ),
        ({"network": "lokr", "lokr_factor": 4}, "lycoris.kohya", {"algo": "lokr", "factor": "4"}),
        ({"dora": True}, "lycoris.kohya", {"algo": "lora", "dora_wd": "True"}),
        (
            {"network": "locon", "dora": True},
            "lycoris.kohya",
            {"algo": "locon", "conv_dim": "4", "conv_alpha": "2", "dora_wd": "True"},
        ),
    ],
)
def test_network_metadata_is_what_sd_scripts_and_lycoris_write(overrides, module, args):
    spec = NetworkSpec.from_config(TrainConfig(rank=4, **overrides))
    assert spec.kohya_module() == module
    assert spec.kohya_args() == args


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--network", "loha", "--dora"], "peft has no DoRA form of loha"),
        (["--network", "lokr", "--dora"], "peft has no DoRA form of lokr"),
        (["--network", "lokr", "--format", "diffusers"], "diffusers/peft files hold LoRA only"),
        (["--dora", "--format", "both"], "DoRA (dora_scale) in kohya/LyCORIS files only"),
        (["--conv-rank", "0"], "conv_rank = 0 must be >= 1"),
        (["--lokr-factor", "4"], "--lokr-factor applies to --network lokr, not lora"),
    ],
)
def test_impossible_network_options_exit_2_in_one_line(tmp_path, capsys, flags, says):
    assert main(["train", str(tmp_path), "--output", str(tmp_path / "x.safetensors"), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_conv_rank_on_a_denoiser_without_resnet_convs_is_one_clear_error():
    from studio.families import FLUX

    pipe = FLUX.build_tiny(0)
    assert conv_block_targets(pipe.components["transformer"]) == ([], [])
    with pytest.raises(StudioError, match="has no ResNet convolutions"):
        inject_network(pipe.components, FLUX, NetworkSpec("locon", 2, 2.0, 2, 2.0), "cross-attn", False)


@pytest.mark.parametrize("name", ["loha", "lokr", "dora"])
def test_switching_the_adapter_off_gives_the_bare_base_for_every_type(name):
    """Previews run the base with ``set_lora_enabled(model, False)``: every type's layers obey it."""
    spec = NetworkSpec("locon", 4, 3.0, 2, 1.5, dora=True) if name == "dora" else SPECS[name]
    pipe, layers = trained_like(ModelFamily.SD1, spec)
    linear = layers[("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q")]
    conv = layers[("unet", "down_blocks.0.resnets.0.conv1")]
    inputs = [
        (linear, torch.randn(2, linear.get_base_layer().in_features)),
        (conv, torch.randn(1, conv.get_base_layer().in_channels, 8, 8)),
    ]
    with torch.no_grad():
        set_lora_enabled(pipe.unet, False)
        for layer, x in inputs:
            torch.testing.assert_close(layer(x), layer.get_base_layer()(x))
        set_lora_enabled(pipe.unet, True)
        for layer, x in inputs:
            assert (layer(x) - layer.get_base_layer()(x)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "overrides", [{"network": "loha"}, {"dora": True}, {"network": "locon"}, {"conv_rank": 4}]
)
def test_flow_families_refuse_lycoris_dora_and_convs_in_one_line(overrides):
    from studio.families import FLUX
    from studio.models.loader import BaseModel
    from studio.training.prediction import base_as_trained

    base = BaseModel(FLUX.build_tiny(0), FLUX, "epsilon", "tiny")
    with pytest.raises(StudioError, match="adapters are plain LoRA on a transformer"):
        base_as_trained(TrainConfig(**overrides), base)


def test_locon_in_the_diffusers_format_keeps_the_conv_rank_and_alpha(tmp_path):
    """peft files carry no alpha tensors: the convs' rank and alpha travel as rank/alpha patterns."""
    family = ModelFamily.SD1
    pipe, layers = trained_like(family, SPECS["locon"])
    path = save_diffusers_lora(
        tmp_path / "a.safetensors",
        extract_lora(pipe.components),
        pipe.components,
        family,
        {},
        dtype=torch.float32,
    )
    adapter = load_adapter(path, build_tiny_pipeline(family, seed=0).components, family, strict=True)
    assert set(adapter.layers) == set(layers)
    for key, layer in layers.items():
        expected = layer.get_delta_weight("default").detach()
        got = adapter.layers[key].delta(tuple(expected.shape))
        assert (got - expected).abs().max().item() <= 1e-6 * expected.abs().max().item(), key
