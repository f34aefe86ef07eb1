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

from studio.formats.kohya import base_layer, layer_shapes
from studio.lora.targets import all_targets
from studio.lora.tensors import LoraTensors
from studio.models.configs import build_components, full_size_model
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline
from studio.models.tokenizer import build_tokenizer

T = TypeVar("T")


def build_flow_pipeline(model: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A full-size SD3.5 / Flux.1 pipeline (``FLOW_FULL_SIZE`` key) with random weights on ``device``.

    Tokenizers are the studio's small offline ones, T5's padded to 512 tokens as Flux-dev's is.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    from studio.models.flow_configs import FLOW_FULL_SIZE, build_flow_components
    from studio.models.tiny_flow import build_t5_tokenizer

    torch.manual_seed(seed)
    components = build_flow_components(model, device, dtype, with_vae=True)
    components["vae"].to(torch.float32)
    t5 = build_t5_tokenizer(max_length=512)
    if FLOW_FULL_SIZE[model].family == "flux":
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )  # fmt: skip
        pipe = FluxPipeline(scheduler=scheduler, tokenizer=build_tokenizer(), tokenizer_2=t5, **components)
    else:
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            tokenizer=build_tokenizer(), tokenizer_2=build_tokenizer(), tokenizer_3=t5, **components,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(model: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """``model`` is a key of ``studio.models.configs.FULL_SIZE`` ("sd15", "sdxl"...), of
    ``studio.models.flow_configs.FLOW_FULL_SIZE`` ("flux1-dev", "sd35-large"...) or "tiny-<family>"."""
    from studio.models.flow_configs import FLOW_FULL_SIZE

    if model in FLOW_FULL_SIZE:
        return build_flow_pipeline(model, device, dtype, seed)
    if model.startswith("tiny-"):
        family = ModelFamily(model.removeprefix("tiny-"))
        pipe = (
            family.build_tiny(seed) if family.denoiser == "transformer" else build_tiny_pipeline(family, seed)
        )
        pipe = pipe.to(device, dtype)
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
    pipe: Any,
    family: ModelFamily,
    directory: Path,
    count: int,
    rank: int,
    preset: str,
    seed: int = 0,
    kohya: bool = True,
) -> list[Path]:
    """``count`` kohya files (else diffusers/peft files of the same tensors) over the ``preset``
    layers (UNet + text encoders), via our exporter.

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
        save = ModelFamily(family).save_kohya_file if kohya else ModelFamily(family).save_diffusers_file
        paths.append(save(file, lora, pipe.components, metadata))
    return paths


def parse_row_specs(text: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """``"ref:4,ours+compile:4"`` -> ``[(kind, number, switches), ...]``; kinds are ref and ours."""
    rows = []
    for item in filter(None, text.split(",")):
        spec, number = item.rsplit(":", 1)
        kind, *switches = spec.split("+")
        if kind not in ("ref", "ours"):
            raise SystemExit(f"unknown row kind {kind!r} in {item!r}")
        rows.append((kind, int(number), tuple(switches)))
    return rows


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
