"""``--fp8-base``: the frozen denoiser stored in fp8 trains like a base rounded to fp8 once.

The reference is the simplest reading of what fp8 storage means: round each weight the fp8 run
stores in fp8 to float8_e4m3fn and back, then train plainly in fp32. The fp8 run upcasts the
same rounded values before every layer, so both must give the same losses and adapter.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from studio.config import TrainConfig
from studio.models.loader import load_base
from studio.samples import make_demo_dataset
from studio.training.fp8 import STORAGE
from studio.training.recipe import train
from studio.training.run import setup_run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=4)


def _config(dataset, out, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset),
        output=str(out / "style.safetensors"),
        resolution=64,
        batch_size=2,
        rank=4,
        lr=1e-3,
        steps=4,
        seed=5,
        train_text_encoder=False,
        mixed_precision="no",
        fused_optimizer=False,
        overlap_steps=False,
    )
    return TrainConfig(**{**values, **overrides})


def test_fp8_base_stores_the_base_in_fp8_and_keeps_lora_in_fp32(dataset, tmp_path):
    run = setup_run(_config(dataset, tmp_path, fp8_base=True))
    unet = run.components["unet"]
    base = {n: p.dtype for n, p in unet.named_parameters() if not p.requires_grad}
    lora = {n: p.dtype for n, p in unet.named_parameters() if p.requires_grad}
    fp8 = [n for n, d in base.items() if d == STORAGE]
    assert lora and set(lora.values()) == {torch.float32}
    assert not any("lora_" in n for n in fp8)
    # Every adapted layer's frozen weight is fp8; norms stay in the compute dtype.
    assert all(f"{n.split('.lora_A')[0]}.base_layer.weight" in fp8 for n in lora if ".lora_A." in n)
    assert not any("norm" in n for n in fp8)
    assert len(fp8) > len(base) / 3


def test_fp8_base_trains_like_a_base_rounded_to_fp8(dataset, tmp_path):
    fp8 = train(_config(dataset, tmp_path / "fp8", fp8_base=True))

    stored = setup_run(_config(dataset, tmp_path / "probe", fp8_base=True)).components["unet"]
    rounded_names = {n.replace(".base_layer", "") for n, p in stored.named_parameters() if p.dtype == STORAGE}
    base = load_base("default")
    unet = base.components["unet"]
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name in rounded_names:
                param.copy_(param.to(STORAGE).float())
    assert len(rounded_names) > 50
    reference = train(_config(dataset, tmp_path / "ref"), base=base)

    # The first step is bitwise equal; later steps agree to ~2e-5 (not bitwise: found, not yet
    # explained), while fp8 against the unrounded base differs at once (test below).
    assert fp8.losses[0] == reference.losses[0]
    torch.testing.assert_close(torch.tensor(fp8.losses), torch.tensor(reference.losses), rtol=1e-3, atol=1e-4)
    assert load_file(str(fp8.outputs[0])).keys() == load_file(str(reference.outputs[0])).keys()
    with safe_open(str(fp8.outputs[0]), "pt") as f:
        assert f.metadata()["ss_fp8_base"] == "True"
    with safe_open(str(reference.outputs[0]), "pt") as f:
        assert f.metadata()["ss_fp8_base"] == "False"


def test_fp8_base_moves_the_loss_away_from_the_full_precision_base(dataset, tmp_path):
    """The switch is real: the fp8 base is not the fp32 base (so the test above can fail)."""
    plain = train(_config(dataset, tmp_path / "plain", steps=1))
    fp8 = train(_config(dataset, tmp_path / "fp8", steps=1, fp8_base=True))
    assert plain.losses[0] != fp8.losses[0]
    # fp8 rounding moves the first loss by ~6% on the embedded model, 20x the tolerance above.
    assert 1e-3 < abs(plain.losses[0] - fp8.losses[0]) < 0.15 * plain.losses[0]


@pytest.mark.gpu
def test_low_memory_brings_the_denoiser_to_the_gpu_only_after_caching(dataset, tmp_path, monkeypatch):
    """The frozen text encoders and the denoiser never share the GPU (Flux: T5-XXL 9.5 GB beside a
    12 GB fp8 transformer would not fit in 20 GB): text is encoded while the UNet waits on the CPU."""
    base = load_base("default")
    unet, encode = base.components["unet"], base.family.encode_text
    seen = []

    def encode_and_look(components, captions, device):
        seen.append((unet.device.type, components["text_encoder"].device.type))
        return encode(components, captions, device)

    monkeypatch.setattr(base.family, "encode_text", encode_and_look)
    run = setup_run(
        _config(dataset, tmp_path, low_memory=True, fp8_base=True, mixed_precision="bf16"), base=base
    )
    assert seen and set(seen) == {("cpu", "cuda")}
    assert unet.device.type == "cuda" and run.components["text_encoder"].device.type == "cpu"
