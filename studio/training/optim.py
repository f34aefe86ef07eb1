"""Optimizer and learning-rate schedule for the adapter parameters.

AdamW is built in; the others come from their standard packages, installed as extras:
bitsandbytes (8-bit AdamW), prodigyopt (Prodigy, which sets its own step size), transformers
(Adafactor) and schedulefree (schedule-free AdamW, which averages the weights itself and must
be switched between train and eval mode: ``optimizer_mode``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from studio.errors import StudioError

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor", "schedulefree")
# optimizer -> (module it imports, pip package); missing ones are one line and exit 2.
PACKAGES = {"adamw8bit": ("bitsandbytes", "bitsandbytes"), "prodigy": ("prodigyopt", "prodigyopt"),
            "schedulefree": ("schedulefree", "schedulefree")}  # fmt: skip


def check_optimizer_package(kind: str) -> None:
    """One clear line when ``kind``'s package is not installed."""
    module, package = PACKAGES.get(kind, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise StudioError(
            f"--optimizer {kind} needs the {package} package",
            hint=f"pip install {package}, or use --optimizer adamw",
        )


def build_optimizer(
    param_groups: list[dict],
    kind: str,
    lr: float,
    weight_decay: float,
    device: torch.device,
    fused: bool = True,
    prodigy: dict[str, Any] | None = None,
    warmup_steps: int = 0,
) -> torch.optim.Optimizer:
    """The optimizer ``kind`` over ``param_groups`` (each with its own lr).

    ``fused`` (AdamW): one kernel for all tensors, on CUDA or CPU. ``prodigy``: Prodigy's
    ``d_coef``, ``safeguard_warmup`` and ``use_bias_correction``. ``warmup_steps``: schedule-free
    AdamW warms up inside the optimizer (it has no external schedule).
    """
    check_optimizer_package(kind)
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(param_groups, lr=lr, weight_decay=weight_decay)
    if kind == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(param_groups, lr=lr, weight_decay=weight_decay, decouple=True, **(prodigy or {}))
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        # An explicit learning rate (the studio's schedule), not Adafactor's relative step size.
        return Adafactor(
            param_groups, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
            warmup_init=False,
        )  # fmt: skip
    if kind == "schedulefree":
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(param_groups, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
    fused = fused and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def optimizer_mode(optimizer: Any, training: bool) -> None:
    """Schedule-free optimizers train on one sequence of weights and evaluate on their average:
    switch before steps (train) and before saving, previews or validation (eval)."""
    if hasattr(optimizer, "train") and hasattr(optimizer, "eval"):
        (optimizer.train if training else optimizer.eval)()


def current_lr(optimizer: Any, lr_scheduler: Any) -> float:
    """The step size the first group uses now: Prodigy's is its estimate ``d`` times the lr."""
    group = optimizer.param_groups[0]
    return float(group["d"] * group["lr"]) if "d" in group else float(lr_scheduler.get_last_lr()[0])


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    except (ValueError, KeyError) as exc:
        raise StudioError(f"unknown learning-rate schedule {name!r} ({exc})") from None
