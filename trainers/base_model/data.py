"""Training samples rendered on the fly, indexed so that sample ``i`` of a seed never changes.

A run that resumes at step ``s`` with batch ``b`` simply continues at sample ``s * b``,
whatever the number of DataLoader workers, which makes training reproducible from the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from trainers.toyworld import IMAGE_SIZE, render_scene, scene_at, training_scene

CAPTION_DROPOUT = 0.1  # empty captions teach the unconditional branch that CFG needs


def generic_texture(rng: random.Random, size: int = IMAGE_SIZE) -> np.ndarray:
    """A random grating, dot lattice, grain or stroke overlay in [-1, 1] (for the VAE only).

    The VAE is a general image codec, as SD's is: it must be able to draw textures the UNet
    never saw (the sample styles). None of these use the style renderers' code or settings.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.choice(("grating", "dots", "grain", "strokes"))
    if kind == "grating":
        angle, period = rng.uniform(0, math.pi), rng.uniform(3.0, 20.0)
        phase = (x * math.cos(angle) + y * math.sin(angle)) / period
        return np.sign(np.sin(2 * math.pi * phase + rng.uniform(0, 6.3))) * rng.uniform(0.3, 1.0)
    if kind == "dots":
        period, radius = rng.uniform(4.0, 16.0), rng.uniform(0.2, 0.5)
        u = (x / period + rng.random()) % 1 - 0.5
        v = (y / period + rng.random()) % 1 - 0.5
        return np.where(u * u + v * v < radius * radius, 1.0, -1.0) * rng.uniform(0.3, 1.0)
    if kind == "grain":
        noise = np.random.default_rng(rng.getrandbits(32)).standard_normal((size, size))
        return noise.astype(np.float32) * rng.uniform(0.05, 0.4)
    out = np.zeros((size, size), np.float32)
    for _ in range(rng.randint(1, 6)):
        cx, cy, r, w = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(5, 50), rng.uniform(1, 5)
        d = np.abs(np.hypot(x - cx, y - cy) - r)
        out = np.where(d < w, rng.choice((-1.0, 1.0)), out)
    return out


class VaeImages(Dataset):
    """Toyworld scenes; 30% of them with a generic texture multiplied in."""

    def __init__(self, seed: int):
        self.seed = seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> torch.Tensor:
        image = render_scene(scene_at(self.seed, index)).astype(np.float32) / 127.5 - 1
        rng = random.Random(f"vae:{self.seed}:{index}")
        if rng.random() < 0.3:
            texture = generic_texture(rng)[..., None]
            image = np.clip(image + (texture * 0.5) * (1 - np.abs(image)) + texture * 0.3, -1, 1)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class CaptionedScenes(Dataset):
    """(uint8 image, token ids) for held-out-free training scenes; uint8 keeps worker IPC 4x smaller."""

    def __init__(self, seed: int, tokenizer):
        self.seed = seed
        self.tokenizer = tokenizer
        self._ids: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return 2**62

    def tokens(self, caption: str) -> torch.Tensor:
        if caption not in self._ids:
            self._ids[caption] = self.tokenizer(
                caption,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
        return self._ids[caption]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene = training_scene(self.seed, index)
        image = torch.from_numpy(render_scene(scene).transpose(2, 0, 1).copy())
        drop = random.Random(f"drop:{self.seed}:{index}").random() < CAPTION_DROPOUT
        return image, self.tokens("" if drop else scene.caption)


class StepBatches(Sampler[list[int]]):
    """Batch ``s`` holds samples ``s*b .. s*b+b-1``; starts at ``first_step`` on resume."""

    def __init__(self, batch_size: int, first_step: int):
        self.batch_size = batch_size
        self.first_step = first_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.first_step
        while True:
            yield list(range(step * self.batch_size, (step + 1) * self.batch_size))
            step += 1
