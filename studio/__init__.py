"""The style-adapter studio: train, blend and export Stable Diffusion style LoRA adapters.

``studio.train(TrainConfig(...))`` trains and exports one adapter; the mixer lives in
``studio.generate`` (``GenerationSession``) and ``studio.mixer``. Heavy modules load on
first use, so ``import studio`` stays fast for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from studio.config import TrainConfig

if TYPE_CHECKING:
    from studio.training.recipe import StepEvent, TrainResult

__all__ = ["TrainConfig", "train"]


def train(config: TrainConfig, on_step: Callable[[StepEvent], Any] | None = None) -> TrainResult:
    """Train the adapter ``config`` describes and export it; ``on_step`` gets a ``StepEvent`` per step.

    ``on_step`` returning ``"stop"`` (or raising ``studio.errors.StopTraining``) ends the run
    early with a checkpoint; the result then says ``stopped=True``.
    """
    from studio.training.recipe import train as run_recipe

    return run_recipe(config, on_step)
