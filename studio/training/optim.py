"""Optimizer and learning-rate schedule for the LoRA parameters."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from studio.errors import StudioError


def build_optimizer(
    param_groups: list[dict],
    kind: str,
    lr: float,
    weight_decay: float,
    device: torch.device,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """AdamW (``fused``: one kernel for all tensors, on CUDA or CPU), or bitsandbytes' 8-bit AdamW
    to save optimizer memory."""
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise StudioError(
                "the 8-bit optimizer needs bitsandbytes",
                hint="pip install bitsandbytes, or use --optimizer adamw",
            ) from None
        return bnb.optim.AdamW8bit(param_groups, lr=lr, weight_decay=weight_decay)
    fused = fused and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    except (ValueError, KeyError) as exc:
        raise StudioError(f"unknown learning-rate schedule {name!r} ({exc})") from None
