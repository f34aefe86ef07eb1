"""The LoRA training recipe: dataset -> base -> adapter -> loop -> kohya file.

Read top to bottom, this is the whole run: ``setup_run`` (studio/training/run.py) builds the
run object, the loop calls ``train_step`` (studio/training/step.py) per micro-batch, and after
each optimizer step the hooks (studio/training/hooks.py) check, log, checkpoint and preview.
What depends on the model family (text encoding, noise target and loss, LoRA targets)
is asked of the family object (studio/families); accelerate handles devices, mixed
precision, gradient accumulation and the processes of multi-GPU runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from studio.config import TrainConfig
from studio.models.loader import BaseModel
from studio.training.hooks import (
    Callback,
    CheckpointEvery,
    Hook,
    LossRecord,
    MetricsLog,
    NanGuard,
    Previews,
    ProgressBar,
    StepEvent,
    TrackerLog,
    Validation,
    on_device,
    run_hooks,
    save_requested,
)
from studio.training.optim import current_lr, optimizer_mode
from studio.training.run import TrainRun, setup_run
from studio.training.sampling import render_samples
from studio.training.step import make_batch, train_step

__all__ = ["StepEvent", "TrainResult", "train"]


@dataclass
class TrainResult:
    base: BaseModel  # the base with the trained adapter still attached (for previews)
    outputs: list[Path]  # the exported files; a stopped run: the kohya file in its last checkpoint
    run_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    images_per_second: float
    stopped: bool = False  # ``on_step`` asked to stop (``"stop"`` or ``StopTraining``)
    checkpoint: Path | None = None  # the checkpoint written at the end
    graph_replays: int = 0  # micro-steps replayed as CUDA graphs (--graph-step)


@dataclass
class Pending:
    """An optimizer step whose loss is still on the device."""

    step: int
    epoch: int
    loss: torch.Tensor
    lr: float
    images: int
    seconds: float


def train(
    config: TrainConfig,
    on_step: Callable[[StepEvent], Any] | None = None,
    base: BaseModel | None = None,
) -> TrainResult:
    """Run ``config``; ``base`` trains on an already loaded model instead of loading ``config.base``.

    ``on_step`` gets a ``StepEvent`` per optimizer step; returning ``"stop"`` or raising
    ``studio.errors.StopTraining`` ends the run with a checkpoint (``result.stopped``).
    """
    run = setup_run(config, base)
    hooks = default_hooks(run, on_step)
    try:
        try:
            stopped = run_loop(run, hooks)
        finally:
            for hook in hooks:
                hook.close()
        return finish(run, stopped)
    finally:
        if config.compile_blocks:  # compiled in place: a base passed in goes back eager
            from studio.compile_blocks import uncompile_blocks

            uncompile_blocks(run.components[run.family.denoiser])


def default_hooks(run: TrainRun, on_step: Callable[[StepEvent], Any] | None) -> list[Hook]:
    config, main = run.config, run.accelerator.is_main_process
    hooks: list[Hook] = [
        NanGuard(run.run_dir),
        LossRecord(run.state.losses),
        ProgressBar(run.total_steps, run.state.step, main),
    ]
    if main:
        prompts = config.sample_prompts or default_sample_prompts(config.trigger, run.items)
        hooks += [
            MetricsLog(run.run_dir),
            CheckpointEvery(
                config.checkpoint_every, run.total_steps, partial(run.save_checkpoint, with_adapter=True)
            ),
            Previews(config.sample_every, partial(render_previews, run, prompts)),
        ]
        if run.validation:
            hooks.append(
                Validation(
                    config.validate_every, config.checkpoint_every, run.total_steps, run.run_dir, run.validate
                )
            )
        if config.log_with != "none":
            hooks.append(TrackerLog(run.accelerator))
    if on_step:
        hooks.append(Callback(on_step))
    return hooks


def run_loop(run: TrainRun, hooks: list[Hook]) -> bool:
    """Step until the end or until a hook stops the run; returns whether one did."""
    config, state = run.config, run.state
    window_loss: torch.Tensor | float = 0.0
    window_images, tick = 0, time.time()
    waiting: list[Pending] = []
    stop = False
    for model in run.models.values():
        model.train()
    optimizer_mode(run.optimizer, training=True)
    while state.step < run.total_steps and not stop:
        epoch, position = divmod(state.micro_step, run.batches_per_epoch)
        everyone = run.batches(epoch)[position]
        loss = train_step(run, make_batch(run, everyone, epoch))
        state.micro_step += 1
        window_loss = window_loss + loss / config.gradient_accumulation
        window_images += len(everyone)
        if not run.accelerator.sync_gradients:
            continue
        run.lr_scheduler.step()
        if run.ema is not None:
            run.ema.step(run.params)
        state.step += 1
        now = time.time()
        lr = current_lr(run.optimizer, run.lr_scheduler)
        waiting.append(Pending(state.step, epoch, window_loss, lr, window_images, now - tick))
        window_loss, window_images, tick = 0.0, 0, now
        # Read the previous step's loss while this step's kernels run; all of them when
        # something must see a finished step.
        keep = 0 if needs_everything(config, hooks, state.step, run.total_steps) else 1
        while len(waiting) > keep:
            stop = finish_step(run, hooks, waiting.pop(0)) or stop
        if save_requested(hooks) and not stop and state.step < run.total_steps:
            stop = save_now(run, hooks, waiting)  # (a stop or the end saves its own)
    while waiting:  # a stop can leave the step after it unread
        stop = finish_step(run, hooks, waiting.pop(0)) or stop
    return stop


def save_now(run: TrainRun, hooks: list[Hook], waiting: list[Pending]) -> bool:
    """ "Save a checkpoint now": every pending step's bookkeeping first, so the checkpoint holds
    the position, losses and adapter of one finished step (only the main process writes).
    Returns whether a hook asked to stop meanwhile: then the stop's checkpoint is the one."""
    stop = False
    while waiting:
        stop = finish_step(run, hooks, waiting.pop(0)) or stop
    save_requested(hooks)  # asked again while those steps were read: this is that save
    if not stop and run.accelerator.is_main_process:
        path = run.save_checkpoint(with_adapter=True)
        run.accelerator.print(f"saved checkpoint {path.name} (asked for)")
    return stop


def needs_everything(config: TrainConfig, hooks: list[Hook], step: int, total_steps: int) -> bool:
    """Checkpoints, previews and the end must see the state after ``step`` with all losses read."""
    every = [hook.every for hook in hooks if hook.every]
    return not config.overlap_steps or step == total_steps or any(step % n == 0 for n in every)


def finish_step(run: TrainRun, hooks: list[Hook], pending: Pending) -> bool:
    """Bookkeeping of one optimizer step once its loss is known; True if a hook asked to stop."""
    event = StepEvent(
        step=pending.step,
        total_steps=run.total_steps,
        epoch=pending.epoch,
        loss=pending.loss.item(),
        lr=pending.lr,
        images_per_second=pending.images / max(pending.seconds, 1e-9),
    )
    return run_hooks(hooks, event)


def finish(run: TrainRun, stopped: bool) -> TrainResult:
    """A final checkpoint (so the run can be extended) and the exported adapter."""
    config, state, accelerator = run.config, run.state, run.accelerator
    accelerator.wait_for_everyone()
    outputs: list[Path] = []
    checkpoint = None
    if accelerator.is_main_process:
        checkpoint = run.save_checkpoint(with_adapter=stopped)
        if stopped:
            outputs = [run.adapter_in(checkpoint)]
        else:
            outputs = run.export(Path(config.output), config.format, run.total_steps)
    seconds = time.time() - run.started
    images = state.micro_step * config.batch_size * accelerator.num_processes
    return TrainResult(
        run.base, outputs, run.run_dir, state.step, state.losses, seconds, images / max(seconds, 1e-9),
        stopped=stopped, checkpoint=checkpoint, graph_replays=run.step_graphs.replays if run.step_graphs else 0,
    )  # fmt: skip


def default_sample_prompts(trigger: str | None, items: list[Any]) -> list[str]:
    prompts = [trigger] if trigger else []
    prompts += [item.caption for item in items[:2]]
    return [p for p in prompts if p] or ["a picture"]


def render_previews(run: TrainRun, prompts: list[str], step: int) -> list[Path]:
    """Preview images of the adapter as it is at ``step`` (parked components come back for it)."""
    config = run.config

    def prompt_arguments(prompt: str) -> dict[str, Any]:
        return run.family.prompt_arguments(run.components, prompt, "", run.device, config.clip_skip)

    # Training keeps the VAE in fp32; SD pipelines cast their latents to it, the flow pipelines
    # (SD3, Flux) hand it the transformer's bf16/fp16 latents, which a CUDA convolution refuses.
    mixed = run.family.denoiser == "transformer" and run.weight_dtype != torch.float32
    autocast = torch.autocast(run.device.type, dtype=run.weight_dtype, enabled=mixed)
    with on_device([run.components[name] for name in run.parked], run.device), run.evaluating(), autocast:
        return render_samples(
            run.base.pipeline, prompts, run.run_dir / "samples", step, run.resolution,
            config.sample_steps, config.seed, prompt_arguments,
        )  # fmt: skip
