"""The denoising objective: noise, timesteps, target, and Min-SNR weighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


def sample_noise(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """fp32 Gaussian noise on the CPU, drawn from ``generator`` (a CPU generator's state can be
    saved and resumed, and every data-parallel process can draw the same global batch's noise)."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        # Offset noise lets the model learn overall brightness (very dark / light styles).
        noise += noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform training timesteps on the CPU (see ``sample_noise``)."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator)


def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction!r}")


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE in fp32, optionally Min-SNR-γ weighted (Hang et al. 2023) per sample."""
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if not min_snr_gamma:
        return per_sample.mean()
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=min_snr_gamma) / snr
    if scheduler.config.prediction_type == "v_prediction":
        weight = torch.clamp(snr, max=min_snr_gamma) / (snr + 1)
    return (per_sample * weight).mean()


def latent_mask(mask, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (H, W numpy array in [0, 1], or None: learn everywhere) averaged down to the
    latent grid, shape (1, h, w)."""
    if mask is None:
        return torch.ones((1, *latent_hw))
    pixels = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.interpolate(pixels, size=tuple(latent_hw), mode="area")[0]


def apply_loss_mask(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weigh each latent pixel's squared error by ``mask`` (B, 1, h, w), as sd-scripts' masked
    loss does (the loss is multiplied by the mask, then averaged over all pixels): scaling both
    sides by sqrt(mask) makes any (weighted) MSE loss of the family that weighted loss."""
    scale = mask.to(prediction.device, torch.float32).sqrt()
    return prediction.float() * scale, target.float() * scale
