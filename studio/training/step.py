"""One training step: a global batch -> its loss -> backward -> (at the boundary) the optimizer.

``make_batch`` draws what the batch needs (latents, captions, noise, timesteps) and
``train_step`` runs it; the family decides how noise is added, what the target is, how the
denoiser is called and how the loss is weighed. All randomness comes from the run's seed
and its generator, so a resumed run replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from studio.data import caption_for_sample
from studio.families import DenoiserInput, TextEmbeddings
from studio.training.data_parallel import average_gradients
from studio.training.loss import apply_loss_mask, sample_noise
from studio.training.run import TrainRun


@dataclass
class Batch:
    """This process's share of one global batch, on the device."""

    size: int  # samples in the global batch (all processes)
    latents: torch.Tensor
    captions: list[str]
    noise: torch.Tensor
    timesteps: torch.Tensor
    original_sizes: list[Any]
    crops: list[Any]
    masks: torch.Tensor | None = None  # loss weights (B, 1, h, w): --masked-loss, --prior-weight


def make_batch(run: TrainRun, everyone: list[int], epoch: int) -> Batch:
    """Latents, captions, noise and timesteps for this process's share of ``everyone``."""
    config, device = run.config, run.device
    mine = run.my_share(everyone)
    batch = [everyone[i] for i in mine]
    rngs = [random.Random(f"{config.seed}:{epoch}:{s}") for s in batch]
    encoded = [_latent(run, s, rng) for s, rng in zip(batch, rngs)]
    latents = torch.stack([e[0] for e in encoded]).to(device).contiguous(memory_format=run.memory_format)
    captions = [
        caption_for_sample(run.items[run.samples[s]], run.data_config, rng) for s, rng in zip(batch, rngs)
    ]
    # Noise and timesteps are drawn for the whole global batch, so they follow the sample, not the process.
    noise = sample_noise((len(everyone), *latents.shape[1:]), run.generator, config.noise_offset)[mine]
    timesteps = run.family.sample_timesteps(run.noise_scheduler, len(everyone), run.generator)[mine]
    noise = noise.to(device, latents.dtype, non_blocking=True).contiguous(memory_format=run.memory_format)
    timesteps = timesteps.to(device, non_blocking=True)
    sizes, crops = [e[1] for e in encoded], [e[2] for e in encoded]
    masks = _loss_weights(run, batch, encoded)
    return Batch(len(everyone), latents, captions, noise, timesteps, sizes, crops, masks)


def _loss_weights(run: TrainRun, batch: list[int], encoded: list[tuple]) -> torch.Tensor | None:
    """Per-latent-pixel loss weights (B, 1, h, w): the --masked-loss mask times --prior-weight for
    regularisation images; None when every weight is 1."""
    items = [run.items[run.samples[s]] for s in batch]
    if not run.config.masked_loss and not any(item.is_reg for item in items):
        return None
    latent_hw = encoded[0][0].shape[-2:]
    weights = []
    for s, item, (_, _, crop) in zip(batch, items, encoded):
        mask = run.loss_mask(run.samples[s], crop, latent_hw) if run.config.masked_loss else None
        mask = torch.ones((1, *latent_hw)) if mask is None else mask
        weights.append(mask * (run.config.prior_weight if item.is_reg else 1.0))
    return torch.stack(weights).to(run.device)


def _latent(run: TrainRun, sample: int, rng: random.Random) -> tuple[torch.Tensor, Any, Any]:
    index = run.samples[sample]
    if not run.config.random_crop:
        return run.latent_cache.get(index)
    return run.latent(index, rng)


def batch_text(run: TrainRun, captions: list[str]) -> TextEmbeddings:
    """Text conditioning: encoded now when the text encoders train, else from the cache."""
    if run.config.train_text_encoder:
        return run.encode_text(captions)
    encoded = [run.text_cache.get(caption) for caption in captions]
    hidden, pooled = (None if parts[0] is None else torch.cat(parts) for parts in zip(*encoded))
    return hidden, pooled


def _pixel_size(run: TrainRun, latents: torch.Tensor) -> tuple[int, int]:
    scale = 2 ** (len(run.components["vae"].config.block_out_channels) - 1)
    return latents.shape[-2] * scale, latents.shape[-1] * scale


def train_step(run: TrainRun, batch: Batch) -> torch.Tensor:
    """Forward, loss and backward of one micro-batch; the optimizer steps when accumulation is
    complete. Returns the loss, detached and (several processes) averaged, still on the device."""
    if run.step_graphs is not None:
        return run.step_graphs(run, batch)
    if run.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed
    with run.accelerator.accumulate(*run.models.values()):
        loss = forward_backward(run, batch, batch_text(run, batch.captions))
        optimizer_step(run, set_to_none=True)
    return finished_loss(run, loss)


def denoiser_input(
    run: TrainRun, batch: Batch, text: TextEmbeddings, noisy: torch.Tensor, conditioning: dict | None = None
) -> DenoiserInput:
    pixels = _pixel_size(run, batch.latents)
    return DenoiserInput(
        noisy,
        batch.timesteps,
        text,
        batch.original_sizes,
        batch.crops,
        pixels,
        run.noise_scheduler,
        conditioning,
    )


def forward_backward(
    run: TrainRun, batch: Batch, text: TextEmbeddings, conditioning: dict | None = None
) -> torch.Tensor:
    """The loss of ``batch`` and its gradients (added to the parameters' ``.grad``)."""
    family, scheduler = run.family, run.noise_scheduler
    noisy = family.noisy_latents(scheduler, batch.latents, batch.noise, batch.timesteps)
    inputs = denoiser_input(
        run, batch, text, noisy, conditioning
    )  # the flow families shift σ by its scheduler
    prediction = family.predict(run.models[family.denoiser], inputs, run.weight_dtype)
    target = family.training_target(scheduler, batch.latents, batch.noise, batch.timesteps)
    if batch.masks is not None:
        prediction, target = apply_loss_mask(prediction, target, batch.masks)
    loss = family.training_loss(prediction, target, batch.timesteps, scheduler, run.config.min_snr_gamma)
    run.accelerator.backward(loss)
    return loss


def optimizer_step(run: TrainRun, set_to_none: bool) -> None:
    """At an accumulation boundary: average (several processes), clip, step, zero the gradients.
    ``set_to_none=False`` zeroes them in place, for a CUDA graph that writes into them."""
    if run.accelerator.sync_gradients:
        average_gradients(run.params)
        if run.config.max_grad_norm:
            run.accelerator.clip_grad_norm_(run.params, run.config.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=set_to_none)


def finished_loss(run: TrainRun, loss: torch.Tensor) -> torch.Tensor:
    loss = loss.detach()
    if run.accelerator.num_processes > 1:
        loss = run.accelerator.reduce(loss, "mean")
    return loss
