"""Preview images during training: fixed prompts and seeds, so frames are comparable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from studio.atomic import atomic_path


@torch.no_grad()
def render_samples(
    pipeline: Any,
    prompts: list[str],
    out_dir: Path,
    step: int,
    resolution: int,
    num_inference_steps: int = 20,
    seed: int = 0,
    prompt_arguments: Any = None,
) -> list[Path]:
    """One image per prompt, seed ``seed + i``; saved as ``samples/step-NNNNNN-i.png``.
    ``prompt_arguments(prompt)``: the pipeline's prompt arguments (the family's, with clip skip)."""
    paths = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        prompt_args = prompt_arguments(prompt) if prompt_arguments else {"prompt": prompt}
        image = pipeline(
            **prompt_args,
            num_inference_steps=num_inference_steps,
            height=resolution,
            width=resolution,
            generator=generator,
        ).images[0]
        target = out_dir / f"step-{step:06d}-{i}.png"
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG")
        paths.append(target)
    return paths
