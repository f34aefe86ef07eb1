"""The training loop's small components against textbook references: targets, Min-SNR,
offset noise, per-component learning rates, warmup, and a frozen text encoder."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from studio import TrainConfig, train
from studio.samples import make_demo_dataset
from studio.training.loss import diffusion_loss, diffusion_target, sample_noise


def _scheduler(prediction: str) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction
    )


def test_v_prediction_target_is_the_velocity():
    scheduler = _scheduler("v_prediction")
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([10, 500, 990])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents  # v = √ᾱ·ε − √(1−ᾱ)·x₀
    torch.testing.assert_close(diffusion_target(scheduler, latents, noise, timesteps), expected)
    assert diffusion_target(_scheduler("epsilon"), latents, noise, timesteps) is noise


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_paper(prediction):
    scheduler, gamma = _scheduler(prediction), 5.0
    pred, target = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    timesteps = torch.tensor([1, 100, 400, 900])
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    weight = torch.minimum(snr, torch.tensor(gamma)) / (snr if prediction == "epsilon" else snr + 1)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(
        diffusion_loss(pred, target, timesteps, scheduler, gamma), (per_sample * weight).mean()
    )
    torch.testing.assert_close(diffusion_loss(pred, target, timesteps, scheduler), per_sample.mean())


def test_offset_noise_adds_one_constant_per_channel():
    latents = torch.zeros(2, 4, 8, 8)
    plain = sample_noise(latents.shape, torch.Generator().manual_seed(0))
    offset = sample_noise(latents.shape, torch.Generator().manual_seed(0), noise_offset=0.1)
    shift = offset - plain
    assert shift.abs().max() > 0
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))  # constant over pixels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=4)


def test_unet_and_text_encoder_lrs_and_warmup(dataset, tmp_path):
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "a.safetensors"), resolution=64, steps=4, rank=2,
        lr=1e-3, te_lr=2e-4, warmup_steps=2, lr_scheduler="constant_with_warmup",
    )  # fmt: skip
    result = train(config)
    lrs = [json.loads(line)["lr"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # logged after each step: warmup, then flat
    checkpoint = sorted((result.run_dir / "checkpoints").iterdir())[-1]
    groups = torch.load(checkpoint / "optimizer.pt", weights_only=True)["param_groups"]
    assert [group["lr"] for group in groups] == pytest.approx([1e-3, 2e-4])  # UNet, text encoder


def test_no_te_leaves_the_text_encoder_untouched(dataset, tmp_path):
    from studio.models.loader import load_base

    original = {n: p.clone() for n, p in load_base("default").components["text_encoder"].named_parameters()}
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "u.safetensors"), resolution=64, steps=2, rank=2,
        lr=1e-2, train_text_encoder=False,
    )  # fmt: skip
    text_encoder = train(config).base.components["text_encoder"]
    trained = {n.replace(".base_layer", ""): p for n, p in text_encoder.named_parameters()}
    assert not any("lora" in name for name in trained)
    assert all(torch.equal(trained[name], value) for name, value in original.items())
