"""Validation loss: a fixed denoising loss on held-out images, comparable across steps and runs.

Each validation image is noised at the same timesteps with noise from its own seed (the run's
seed and the image's file name), drawn apart from the training generator. So the value depends
only on the adapter: the same adapter gives the same number twice, in another run, or after a
resume, and a lower value at a later checkpoint means the adapter fits unseen images better.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.data import DatasetConfig, ImageItem, load_training_image, scan_dataset
from studio.errors import StudioError
from studio.families import DenoiserInput, Family
from studio.training.encoding import encode_latents

TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # of the schedule's length: low to high noise


def split_validation(
    items: list[ImageItem], fraction: float, seed: int
) -> tuple[list[ImageItem], list[ImageItem]]:
    """``(training, held out)``: ``fraction`` of the images (at least one, never all), chosen
    by ``seed`` from the sorted file names, so the same folder and seed hold out the same images."""
    if len(items) < 2:
        raise StudioError(
            f"--validation-split needs at least 2 images, the dataset has {len(items)}",
            hint="add images, or pass a separate --validation-dir",
        )
    count = min(len(items) - 1, max(1, round(fraction * len(items))))
    order = sorted(range(len(items)), key=lambda i: str(items[i].path))
    random.Random(f"{seed}:validation").shuffle(order)
    held = set(order[:count])
    return [it for i, it in enumerate(items) if i not in held], [
        it for i, it in enumerate(items) if i in held
    ]


def validation_items(root: str, data_config: DatasetConfig) -> list[ImageItem]:
    """The images of ``--validation-dir``, read like the training folder."""
    from dataclasses import replace

    return scan_dataset(replace(data_config, root=Path(root))).items


@dataclass
class ValidationImage:
    latents: torch.Tensor  # the image's latent, repeated once per timestep
    noise: torch.Tensor
    timesteps: torch.Tensor
    caption: str
    original_size: tuple[int, int]
    crop: tuple[int, int]


def _seed(seed: int, item: ImageItem) -> int:
    digest = hashlib.sha256(f"{seed}:{item.path.name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def prepare_validation(
    items: list[ImageItem], components: dict[str, Any], scheduler: Any, seed: int, device: torch.device
) -> list[ValidationImage]:
    """Latents, noise and timesteps of each image, drawn once (center crop, the full caption)."""
    length = scheduler.config.num_train_timesteps
    timesteps = torch.tensor([int(f * length) for f in TIMESTEP_FRACTIONS], dtype=torch.long)
    prepared = []
    for item in items:
        pixels, original_size, crop = load_training_image(item, item.bucket, None)
        with torch.no_grad():
            latent = encode_latents(components["vae"], pixels[None].to(device))[0].float().cpu()
        generator = torch.Generator().manual_seed(_seed(seed, item))
        noise = torch.randn((len(timesteps), *latent.shape), generator=generator)
        latents = latent[None].expand(len(timesteps), *latent.shape).contiguous()
        prepared.append(ValidationImage(latents, noise, timesteps, item.caption, original_size, crop))
    return prepared


@torch.no_grad()
def validation_loss(
    images: list[ValidationImage],
    family: Family,
    components: dict[str, Any],
    denoiser: Any,
    scheduler: Any,
    encode_text: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """Mean plain MSE (no Min-SNR weighting) over images and timesteps; ``encode_text(captions)``
    gives the conditioning (the text encoders may carry the adapter too)."""
    total = 0.0
    for image in images:
        n = len(image.timesteps)
        latents, noise = image.latents.to(device, dtype), image.noise.to(device, dtype)
        timesteps = image.timesteps.to(device)
        text = encode_text([image.caption] * n)
        noisy = family.noisy_latents(scheduler, latents, noise, timesteps)
        scale = 2 ** (len(components["vae"].config.block_out_channels) - 1)
        size = (latents.shape[-2] * scale, latents.shape[-1] * scale)
        inputs = DenoiserInput(noisy, timesteps, text, [image.original_size] * n, [image.crop] * n, size)
        prediction = family.predict(denoiser, inputs, dtype)
        target = family.training_target(scheduler, latents, noise, timesteps)
        total += torch.nn.functional.mse_loss(prediction.float(), target.float()).item()
    return total / max(len(images), 1)
