"""What the benchmarks share: full-size pipelines with random weights, random kohya LoRA files, timers.

Weights can never be downloaded, so a "real" SD 1.5 or SDXL is built from the real configs
(:mod:`studio.models.configs`) and initialised at random: every layer, shape and kernel of
the real model, hence its speed, without its checkpoint. The tokenizer is the studio's
small offline one; token ids only index the embedding, so it costs the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from studio.formats.kohya import base_layer, layer_shapes, save_kohya
from studio.lora.targets import all_targets
from studio.lora.tensors import LoraTensors
from studio.models.configs import build_components, full_size_model
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline
from studio.models.tokenizer import build_tokenizer

T = TypeVar("T")


def build_pipeline(model: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """``model`` is a key of ``studio.models.configs.FULL_SIZE`` ("sd15", "sdxl"...) or "tiny-<family>"."""
    if model.startswith("tiny-"):
        pipe = build_tiny_pipeline(ModelFamily(model.removeprefix("tiny-")), seed).to(device, dtype)
    else:
        torch.manual_seed(seed)
        components = build_components(model, device, dtype, with_vae=True)
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
        if full_size_model(model).family is ModelFamily.SDXL:
            pipe = StableDiffusionXLPipeline(
                **components, tokenizer=build_tokenizer(), tokenizer_2=build_tokenizer(), scheduler=scheduler
            )
        else:
            pipe = StableDiffusionPipeline(
                **components,
                tokenizer=build_tokenizer(),
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_random_loras(
    pipe: Any, family: ModelFamily, directory: Path, count: int, rank: int, preset: str, seed: int = 0
) -> list[Path]:
    """``count`` kohya files over the ``preset`` layers (UNet + text encoders), via our exporter.

    down ~ N(0, 1/fan_in) and up ~ N(0, 0.01²) with alpha = rank/2, so each ΔW is a few
    percent of the default-initialised weight: big enough to change images, small enough to
    keep a random fp16 model finite. One alpha for every layer, as diffusers needs.
    """
    targets = all_targets(pipe.components, family, preset)
    device = pipe.device  # drawn there (fast on a GPU), saved from the CPU
    paths = []
    for i in range(count):
        generator = torch.Generator(device).manual_seed(seed + i)
        lora = {}
        for component, module_paths in targets.items():
            for path in module_paths:
                down_shape, up_shape = layer_shapes(base_layer(pipe.components, component, path), rank)
                down = torch.randn(down_shape, generator=generator, device=device)
                down = down.div_(math.sqrt(math.prod(down_shape[1:]))).cpu()
                up = torch.randn(up_shape, generator=generator, device=device).mul_(0.01).cpu()
                lora[(component, path)] = LoraTensors(down, up, alpha=rank / 2)
        metadata = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2), "studio.layers": preset}
        file = directory / f"style_{i}.safetensors"
        paths.append(save_kohya(file, lora, pipe.components, family, metadata))
    return paths


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """``(fn(*args, **kwargs), seconds)``, the device's queue drained on both sides."""
    sync(device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    sync(device)
    return result, time.perf_counter() - start


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
