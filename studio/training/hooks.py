"""What happens after each optimizer step, one small object per job.

A hook is called with the step's ``StepEvent`` once its loss is known, in order: the NaN
guard, the loss record, the progress bar, metrics, checkpoints, previews, then the
caller's ``on_step``. A hook may return ``STOP`` to end the run after this step (the
run then saves a checkpoint and returns ``stopped=True``); ``on_step`` may answer ``SAVE``
for a checkpoint now, written before the next step starts. A hook whose ``every`` is set
needs the state right after its steps: with overlapped steps, the loop finishes every
pending step before such a step's hooks run. Each hook takes only what it needs, so it can
be built and tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from studio.errors import StopTraining, TrainingDiverged
from studio.training.checkpoint import list_checkpoints
from studio.training.metrics import append_metrics
from studio.training.progress import progress

STOP = "stop"
SAVE = "save"


@dataclass
class StepEvent:
    """Sent to ``on_step`` after every optimizer step (the app draws its progress from it)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    images_per_second: float
    samples: list[Path] = field(default_factory=list)
    checkpoint: Path | None = None
    val_loss: float | None = None  # set on the steps the validation loss is computed


class Hook:
    """Base of the hooks: ``__call__`` per step; ``every`` > 0 marks the steps it needs finished."""

    every: int = 0

    def __call__(self, event: StepEvent) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        """The run is over (finished, stopped or failed)."""


class NanGuard(Hook):
    """A NaN or infinite loss ends the run with one line naming the last good checkpoint."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def __call__(self, event: StepEvent) -> None:
        if math.isfinite(event.loss):
            return
        found = list_checkpoints(self.run_dir)
        last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss became {event.loss} at step {event.step}; {last}",
            hint="lower --lr, use --mixed-precision bf16 or no, or check the dataset",
        )


class LossRecord(Hook):
    """Keeps every step's loss (``TrainResult.losses``, and checkpoints, which resume it)."""

    def __init__(self, losses: list[float]):
        self.losses = losses

    def __call__(self, event: StepEvent) -> None:
        self.losses.append(event.loss)


class ProgressBar(Hook):
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = progress(total=total, initial=initial, desc="training", shown=enabled)

    def __call__(self, event: StepEvent) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", img_s=f"{event.images_per_second:.1f}"
        )

    def close(self) -> None:
        self.bar.close()


class MetricsLog(Hook):
    """One ``metrics.jsonl`` line per step."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def __call__(self, event: StepEvent) -> None:
        record = {
            "step": event.step,
            "loss": event.loss,
            "lr": event.lr,
            "img_s": round(event.images_per_second, 3),
        }
        append_metrics(self.run_dir, record)


class Validation(Hook):
    """The validation loss every ``every`` steps, at each checkpoint and at the end; each value
    is a ``{"step", "val_loss"}`` line in ``metrics.jsonl`` (``compute()`` returns it)."""

    def __init__(self, every: int, checkpoint_every: int, total_steps: int, run_dir: Path, compute):
        self.every, self.checkpoint_every, self.total_steps = every, checkpoint_every, total_steps
        self.run_dir, self.compute = run_dir, compute

    def due(self, step: int) -> bool:
        return (
            any(n and step % n == 0 for n in (self.every, self.checkpoint_every)) or step == self.total_steps
        )

    def __call__(self, event: StepEvent) -> None:
        if self.due(event.step):
            event.val_loss = self.compute()
            append_metrics(self.run_dir, {"step": event.step, "val_loss": event.val_loss})


class CheckpointEvery(Hook):
    """A checkpoint (with a usable kohya file inside) every ``every`` steps; the end saves its own."""

    def __init__(self, every: int, total_steps: int, save: Callable[[], Path]):
        self.every, self.total_steps, self.save = every, total_steps, save

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < self.total_steps

    def __call__(self, event: StepEvent) -> None:
        if self.due(event.step):
            event.checkpoint = self.save()


class Previews(Hook):
    """Preview images every ``every`` steps (``render(step)`` returns their paths)."""

    def __init__(self, every: int, render: Callable[[int], list[Path]]):
        self.every, self.render = every, render

    def __call__(self, event: StepEvent) -> None:
        if self.every and event.step % self.every == 0:
            event.samples = self.render(event.step)


class TrackerLog(Hook):
    """Each step's loss and lr, the validation loss and the previews, to accelerate's trackers
    (TensorBoard or W&B, ``--log-with``)."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def __call__(self, event: StepEvent) -> None:
        values = {"loss": event.loss, "lr": event.lr}
        if event.val_loss is not None:
            values["val_loss"] = event.val_loss
        self.accelerator.log(values, step=event.step)
        if event.samples:
            self._images(event.samples, event.step)

    def _images(self, paths: list[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
        for tracker in self.accelerator.trackers:
            for i, image in enumerate(images):
                if tracker.name == "tensorboard":
                    tracker.log_images({f"samples/{i}": image[None]}, step, dataformats="NHWC")
                else:
                    tracker.log_images({f"samples/{i}": [image]}, step)

    def close(self) -> None:
        self.accelerator.end_training()


class Callback(Hook):
    """The caller's ``on_step``; returning ``"stop"`` or raising ``StopTraining`` stops the run,
    returning ``"save"`` asks for a checkpoint now (``save_requested``).

    In a data-parallel run every process calls it with the same event, and all of them must
    decide alike (a decision from the event itself does).
    """

    def __init__(self, on_step: Callable[[StepEvent], Any]):
        self.on_step = on_step
        self.save_asked = False

    def __call__(self, event: StepEvent) -> str | None:
        try:
            answer = self.on_step(event)
        except StopTraining:
            return STOP
        self.save_asked = self.save_asked or answer == SAVE
        return STOP if answer == STOP else None


def save_requested(hooks: list[Hook]) -> bool:
    """Whether ``on_step`` asked for a checkpoint since the last call (the request is taken)."""
    asked = [hook for hook in hooks if isinstance(hook, Callback) and hook.save_asked]
    for hook in asked:
        hook.save_asked = False
    return bool(asked)


def run_hooks(hooks: list[Hook], event: StepEvent) -> bool:
    """Call every hook on ``event``; True when one of them asked to stop (all still run)."""
    stop = False
    for hook in hooks:
        stop = hook(event) == STOP or stop
    return stop


@contextmanager
def on_device(modules: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """Bring parked (CPU) modules to ``device`` for a moment."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
