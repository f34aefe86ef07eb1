"""Each network type end to end on the embedded model and a tiny SD 1.x: it trains, the file says
what it is (ss_network_module / ss_network_args), and it re-imports and mixes to the trained ΔW."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_networks_support import NETWORKS, peft_layers, sd1_kohya_name

from studio import train
from studio.adapters import load_adapter
from studio.config import TrainConfig
from studio.lora.networks import NetworkSpec
from studio.mixer import BlendEngine, BlendItem
from studio.models.loader import load_base
from studio.models.tiny import build_tiny_pipeline
from studio.samples import make_demo_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=2)


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd1") / "base"
    build_tiny_pipeline("sd1").save_pretrained(folder)
    return str(folder)


def _config(dataset, tmp_path, base: str, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset), output=str(tmp_path / "style.safetensors"), base=base, resolution=64,
        batch_size=2, rank=4, alpha=2.0, lr=1e-2, steps=1, seed=3, layers="attn",
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def _train(dataset, tmp_path, base: str, **overrides):
    return train(_config(dataset, tmp_path, base, **overrides))


# Every type on a tiny SD 1.x; the embedded model for the types test_train.py does not train.
RUNS = [("tiny-sd1", network) for network in NETWORKS] + [("default", n) for n in NETWORKS if n != "lora"]


@pytest.mark.parametrize(("base", "network"), RUNS)
def test_each_network_trains_exports_reimports_and_mixes(dataset, tiny_sd1, tmp_path, network, base):
    result = _train(dataset, tmp_path, tiny_sd1 if base == "tiny-sd1" else "default", network=network)
    [path] = result.outputs
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    spec = NetworkSpec.from_config(TrainConfig(network=network, rank=4))
    assert metadata["ss_network_module"] == spec.kohya_module()
    assert json.loads(metadata["ss_network_args"]) == spec.kohya_args()

    layers = peft_layers(result.base.components)
    fresh = load_base(tiny_sd1 if base == "tiny-sd1" else "default")
    adapter = load_adapter(path, fresh.components, fresh.family, strict=True)
    assert set(adapter.layers) == set(layers)
    if network == "locon":
        assert any(key[1].endswith("resnets.0.conv1") for key in adapter.layers)
    originals = {
        key: fresh.components[key[0]].get_submodule(key[1]).weight.detach().clone() for key in layers
    }
    BlendEngine(fresh.components).set_blend([BlendItem(adapter)])
    moved = 0
    for key, layer in layers.items():
        expected = layer.get_delta_weight("default").detach().float()
        mixed = fresh.components[key[0]].get_submodule(key[1]).weight.detach().float() - originals[key]
        # the file is fp16 (the default save precision): factors rounded once
        assert (mixed - expected).abs().max().item() <= 2e-3 * expected.abs().max().item() + 1e-7, key
        moved += bool(expected.abs().max() > 0)
    assert moved > len(layers) // 2  # training moved the adapter (one factor starts at zero)


def test_dora_trains_and_exports_its_magnitudes(dataset, tiny_sd1, tmp_path):
    result = _train(dataset, tmp_path, tiny_sd1, dora=True)
    state = load_file(str(result.outputs[0]))
    layers = peft_layers(result.base.components)
    assert sum(key.endswith(".dora_scale") for key in state) == len(layers) > 0
    for (component, path), layer in layers.items():
        base = layer.get_base_layer().weight.detach().float()
        initial = base.reshape(base.shape[0], -1).norm(dim=1)  # peft starts DoRA at the weight's norms
        trained = layer.lora_magnitude_vector["default"].weight.detach().flatten()
        assert not torch.allclose(trained, initial, rtol=1e-6, atol=0), path  # trained...
        exported = state[f"{sd1_kohya_name(component, path)}.dora_scale"]
        torch.testing.assert_close(exported.flatten(), trained.half())  # ...and exported


def test_a_lycoris_run_resumes_exactly_with_previews(dataset, tiny_sd1, tmp_path):
    """Checkpoints hold any type's parameters; previews switch the adapter as for LoRA."""
    extra = dict(steps=2, network="lokr", conv_rank=2, sample_every=2, sample_steps=1, sample_prompts=["a"])
    straight = _train(dataset, tmp_path / "a", tiny_sd1, **extra)

    def crash_at_step_1(event):
        if event.step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            _config(dataset, tmp_path / "b", tiny_sd1, checkpoint_every=1, **extra), on_step=crash_at_step_1
        )
    resumed = _train(dataset, tmp_path / "b", tiny_sd1, resume=str(tmp_path / "b" / "style-run"), **extra)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    a, b = load_file(str(straight.outputs[0])), load_file(str(resumed.outputs[0]))
    assert a.keys() == b.keys() and any(".lokr_w2_a" in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-5)


def test_dora_reimports_and_mixes_to_the_trained_weights(dataset, tiny_sd1, tmp_path):
    """The exported DoRA file, read by the studio's loader and patched by the mixer, gives the
    weights peft's own DoRA merge gives: W' = m ⊙ (W0 + s·BA) / ‖W0 + s·BA‖."""
    result = _train(dataset, tmp_path, tiny_sd1, dora=True)
    layers = peft_layers(result.base.components)
    fresh = load_base(tiny_sd1)
    adapter = load_adapter(result.outputs[0], fresh.components, fresh.family, strict=True)
    assert set(adapter.layers) == set(layers)
    assert {layer.kind for layer in adapter.layers.values()} == {"dora"}
    BlendEngine(fresh.components).set_blend([BlendItem(adapter)])
    for key, layer in layers.items():
        layer.merge()
        merged = layer.get_base_layer().weight.detach().float()
        mixed = fresh.components[key[0]].get_submodule(key[1]).weight.detach().float()
        # the file is fp16: factors and magnitudes rounded once
        assert (mixed - merged).abs().max().item() <= 2e-3 * merged.abs().max().item(), key
