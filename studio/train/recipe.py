"""The LoRA training recipe: dataset -> base -> adapter -> loop -> kohya file.

Read top to bottom, this is the whole run. Each step is a small component from
``studio`` (data, models, lora, formats, and train: encoding, loss, optim,
checkpoint, sampling, data_parallel); accelerate handles devices, mixed precision,
gradient accumulation and the processes of multi-GPU runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.training_utils import cast_training_params
from tqdm.auto import tqdm

from studio.atomic import write_text
from studio.compile_cache import use_persistent_compile_cache
from studio.config import TrainConfig
from studio.data import (
    DatasetConfig,
    caption_for_sample,
    epoch_batches,
    expand_samples,
    load_training_image,
    scan_dataset,
)
from studio.errors import TrainingDiverged
from studio.lora.inject import extract_lora, inject_lora
from studio.models.family import ModelFamily
from studio.models.loader import BaseModel, load_base
from studio.train.checkpoint import (
    TrainingState,
    checkpoint_adapter_name,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from studio.train.data_parallel import average_gradients, broadcast_parameters
from studio.train.encoding import ContentCache, encode_latents, encode_text, sdxl_time_ids
from studio.train.export import export_adapter
from studio.train.loss import diffusion_loss, diffusion_target, sample_noise, sample_timesteps
from studio.train.optim import build_lr_scheduler, build_optimizer
from studio.train.sampling import render_samples


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


@dataclass
class Pending:
    """An optimizer step whose loss is still on the device."""

    step: int
    epoch: int
    loss: torch.Tensor
    lr: float
    images: int
    seconds: float


@dataclass
class TrainResult:
    base: BaseModel  # the base with the trained adapter still attached (for previews)
    outputs: list[Path]
    run_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    images_per_second: float


def _mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _low_memory(config: TrainConfig) -> TrainConfig:
    """What ``low_memory`` switches on (8-bit Adam only where bitsandbytes is installed)."""
    if not config.low_memory:
        return config
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()
    return dataclasses.replace(
        config,
        gradient_checkpointing=True,
        train_text_encoder=False,
        optimizer="adamw8bit" if has_bnb else config.optimizer,
    )


def train(
    config: TrainConfig,
    on_step: Callable[[StepEvent], None] | None = None,
    base: BaseModel | None = None,
) -> TrainResult:
    """Run ``config``; ``base`` trains on an already loaded model instead of loading ``config.base``."""
    config.validate()
    config = _low_memory(config)
    config = dataclasses.replace(config, mixed_precision=_mixed_precision(config.mixed_precision))
    started = time.time()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=not torch.cuda.is_available(),  # several CPU processes (tests) talk over gloo
    )
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )

    # 1. Data and base model.
    base = base or load_base(config.base, config=config.base_config)
    family, components = base.family, base.components
    resolution = config.resolution or family.default_resolution
    data_config = DatasetConfig(
        root=config.data,
        trigger=config.trigger,
        resolution=resolution,
        bucket_step=config.bucket_step,
        random_crop=config.random_crop,
        shuffle_tags=config.shuffle_tags,
        keep_tokens=config.keep_tokens,
        caption_dropout=config.caption_dropout,
    )
    dataset = scan_dataset(data_config)
    for warning in dataset.warnings:
        accelerator.print(f"warning: {warning}")
    items = dataset.items
    samples = expand_samples(items)

    # 2. Adapter: frozen base in the compute dtype, LoRA parameters in fp32.
    torch.manual_seed(config.seed)
    inject_lora(
        components, family, config.rank, config.effective_alpha, config.layers, config.train_text_encoder
    )
    te_names = list(family.text_encoder_names)
    trainable = {"unet": components["unet"]}
    if config.train_text_encoder:
        trainable.update({name: components[name] for name in te_names})
    for name in ("vae", "unet", *te_names):
        dtype = torch.float32 if name == "vae" else weight_dtype
        components[name].to(device)
        if components[name].dtype != dtype:
            components[name].to(dtype=dtype)
    cast_training_params(list(trainable.values()), dtype=torch.float32)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    components["unet"].to(memory_format=memory_format)
    if config.gradient_checkpointing:
        components["unet"].enable_gradient_checkpointing()
        if config.train_text_encoder:
            for name in te_names:
                components[name].gradient_checkpointing_enable({"use_reentrant": False})

    # 3. Optimizer and schedule.
    # Data parallel: every process walks the same global batches (batch_size per process) and
    # takes its share, so N GPUs see exactly what one GPU sees at N times the batch size.
    global_batch = config.batch_size * accelerator.num_processes
    batches_per_epoch = len(epoch_batches(items, global_batch, config.seed, 0))
    steps_per_epoch = max(1, batches_per_epoch // config.gradient_accumulation)
    total_steps = config.steps or steps_per_epoch * (config.epochs or 10)
    groups = [{"params": [p for p in components["unet"].parameters() if p.requires_grad], "lr": config.lr}]
    for name in te_names if config.train_text_encoder else []:
        groups.append(
            {
                "params": [p for p in components[name].parameters() if p.requires_grad],
                "lr": config.effective_te_lr,
            }
        )
    optimizer = build_optimizer(
        groups, config.optimizer, config.lr, config.weight_decay, device, config.fused_optimizer
    )
    lr_scheduler = build_lr_scheduler(config.lr_scheduler, optimizer, config.warmup_steps, total_steps)
    # Mixed precision only, no DDP wrapper: on several GPUs the gradients are averaged by hand,
    # once per step (studio/train/data_parallel.py).
    models = {k: accelerator.prepare_model(m, evaluation_mode=True) for k, m in trainable.items()}
    optimizer = accelerator.prepare(optimizer)
    params = [p for m in models.values() for p in m.parameters() if p.requires_grad]
    broadcast_parameters(params)
    graphs = config.cuda_graphs and device.type == "cuda"
    if config.compile or config.cuda_graphs:
        # Here rather than through accelerate's dynamo plugin: that setting lives in a per-process
        # singleton, so a second run in one process (the app's worker) would silently skip it.
        # The whole UNet, not its repeated blocks: block-wise compiling recompiled per shape and
        # ran slower here (see BENCHMARKS.md).
        use_persistent_compile_cache()
        models["unet"] = torch.compile(models["unet"], mode="reduce-overhead" if graphs else None)

    generator = torch.Generator().manual_seed(config.seed)
    run_dir = config.effective_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        config.save(run_dir / "config.toml")
    state = TrainingState(step=0, micro_step=0, losses=[])
    if config.resume:
        checkpoint = resolve_checkpoint(config.resume)
        state = load_checkpoint(checkpoint, trainable, optimizer, lr_scheduler, generator)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
        _trim_metrics(run_dir, state.step)

    # 4. Caches: latents by (image, bucket), frozen text outputs by caption text.
    noise_scheduler = DDPMScheduler.from_config(base.pipeline.scheduler.config)

    def make_latent(index: int):
        item = items[index]
        pixels, original_size, crop = load_training_image(item, item.bucket, None)
        return encode_latents(components["vae"], pixels[None]).to(weight_dtype)[0], original_size, crop

    latent_cache = ContentCache(make_latent)
    if not config.random_crop:
        for index in tqdm(range(len(items)), desc="caching latents", disable=not accelerator.is_main_process):
            latent_cache.get(index)
    text_cache = ContentCache(
        lambda caption: tuple(
            t if t is None else t.detach()
            for t in torch.no_grad()(encode_text)(components, family, [caption], device)
        )
    )
    # Low memory: once everything they produce is cached, the VAE and frozen text encoders wait
    # on the CPU (previews bring them back for a moment).
    parked = []
    if config.low_memory and not config.random_crop:
        parked.append("vae")
    if config.low_memory and not config.train_text_encoder and not config.shuffle_tags:
        for caption in {item.caption for item in items} | {""}:
            text_cache.get(caption)
        parked += te_names
    for name in parked:
        components[name].to("cpu")
    if parked and device.type == "cuda":
        torch.cuda.empty_cache()

    def latent_for(sample: int, rng: random.Random):
        index = samples[sample]
        if not config.random_crop:
            return latent_cache.get(index)
        item = items[index]
        pixels, original_size, crop = load_training_image(item, item.bucket, rng)
        return encode_latents(components["vae"], pixels[None]).to(weight_dtype)[0], original_size, crop

    def text_for(captions: list[str]):
        if config.train_text_encoder:
            return encode_text(components, family, captions, device)
        encoded = [text_cache.get(c) for c in captions]
        hidden = torch.cat([e[0] for e in encoded])
        pooled = None if encoded[0][1] is None else torch.cat([e[1] for e in encoded])
        return hidden, pooled

    sample_prompts = config.sample_prompts or _default_sample_prompts(config.trigger, items)

    def export(output: Path, file_format: str, steps: int) -> list[Path]:
        unwrapped = {k: accelerator.unwrap_model(v, keep_torch_compile=False) for k, v in models.items()}
        lora = extract_lora({**components, **unwrapped})
        settings = dataclasses.replace(config, output=str(output), format=file_format)
        epochs = math.ceil(steps / steps_per_epoch)
        return export_adapter(
            settings, base, lora, dataset, resolution, steps, started, epochs, accelerator.num_processes
        )

    def my_share(global_batch: list[int]) -> list[int]:
        """Positions in the global batch this process trains on (every process gets at least one)."""
        n = accelerator.num_processes
        positions = list(range(len(global_batch)))
        positions = (positions * n)[: max(n, len(positions))]  # repeat a batch smaller than n
        return positions[accelerator.process_index :: n]

    def finish_step(pending: Pending) -> None:
        """Bookkeeping of one optimizer step once its loss is known: checks, logs, side outputs."""
        loss = pending.loss.item()
        if not math.isfinite(loss):
            last = _last_checkpoint_text(run_dir)
            raise TrainingDiverged(
                f"loss became {loss} at step {pending.step}; {last}",
                hint="lower --lr, use --mixed-precision bf16 or no, or check the dataset",
            )
        state.losses.append(loss)
        event = StepEvent(
            step=pending.step,
            total_steps=total_steps,
            epoch=pending.epoch,
            loss=loss,
            lr=pending.lr,
            images_per_second=pending.images / max(pending.seconds, 1e-9),
        )
        progress.update(1)
        progress.set_postfix(
            loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", img_s=f"{event.images_per_second:.1f}"
        )
        if accelerator.is_main_process:
            _append_metrics(run_dir, event)
            if (
                config.checkpoint_every
                and event.step % config.checkpoint_every == 0
                and event.step < total_steps
            ):
                event.checkpoint = save_checkpoint(
                    run_dir, state, trainable, optimizer, lr_scheduler, generator, config.to_dict(),
                    config.keep_checkpoints,
                )  # fmt: skip
                # A usable kohya file per checkpoint: try it elsewhere, or grid checkpoint x weight.
                export(
                    event.checkpoint / checkpoint_adapter_name(config.output, event.step), "kohya", event.step
                )
            if config.sample_every and event.step % config.sample_every == 0:
                with _on_device([components[name] for name in parked], device):
                    event.samples = _samples(
                        base.pipeline, models, sample_prompts, run_dir, event.step, resolution, config
                    )
        if on_step:
            on_step(event)

    def needs_everything(step: int) -> bool:
        """Checkpoints, previews and the end must see the state after ``step`` with all losses read."""
        every = [n for n in (config.checkpoint_every, config.sample_every) if n]
        return not config.overlap_steps or step == total_steps or any(step % n == 0 for n in every)

    # 5. The loop.
    progress = tqdm(
        total=total_steps, initial=state.step, desc="training", disable=not accelerator.is_main_process
    )
    epoch_cache: dict[int, list[list[int]]] = {}
    window_loss: torch.Tensor | float = 0.0
    window_images, tick = 0, time.time()
    waiting: list[Pending] = []
    for model in models.values():
        model.train()
    while state.step < total_steps:
        epoch, position = divmod(state.micro_step, batches_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = epoch_batches(items, global_batch, config.seed, epoch)
        everyone = epoch_cache[epoch][position]
        mine = my_share(everyone)
        batch = [everyone[i] for i in mine]

        rngs = [random.Random(f"{config.seed}:{epoch}:{s}") for s in batch]
        encoded = [latent_for(s, rng) for s, rng in zip(batch, rngs)]
        latents = torch.stack([e[0] for e in encoded]).to(device)
        latents = latents.contiguous(memory_format=memory_format)
        captions = [caption_for_sample(items[samples[s]], data_config, rng) for s, rng in zip(batch, rngs)]
        # Noise and timesteps are drawn for the whole global batch, so they follow the sample, not the process.
        noise = sample_noise((len(everyone), *latents.shape[1:]), generator, config.noise_offset)[mine]
        timesteps = sample_timesteps(len(everyone), noise_scheduler.config.num_train_timesteps, generator)[
            mine
        ]
        noise = noise.to(device, latents.dtype, non_blocking=True).contiguous(memory_format=memory_format)
        timesteps = timesteps.to(device, non_blocking=True)

        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed
        with accelerator.accumulate(*models.values()):
            hidden, pooled = text_for(captions)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            added = None
            if family is ModelFamily.SDXL:
                h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
                time_ids = sdxl_time_ids([e[1] for e in encoded], [e[2] for e in encoded], (h, w), device)
                added = {"text_embeds": pooled.to(weight_dtype), "time_ids": time_ids.to(weight_dtype)}
            prediction = models["unet"](
                noisy, timesteps, hidden.to(weight_dtype), added_cond_kwargs=added, return_dict=False
            )[0]
            target = diffusion_target(noise_scheduler, latents, noise, timesteps)
            loss = diffusion_loss(prediction, target, timesteps, noise_scheduler, config.min_snr_gamma)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                average_gradients(params)
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        state.micro_step += 1
        loss = loss.detach()
        if accelerator.num_processes > 1:
            loss = accelerator.reduce(loss, "mean")
        window_loss = window_loss + loss / config.gradient_accumulation
        window_images += len(everyone)
        if not accelerator.sync_gradients:
            continue
        lr_scheduler.step()
        state.step += 1
        now = time.time()
        waiting.append(
            Pending(state.step, epoch, window_loss, lr_scheduler.get_last_lr()[0], window_images, now - tick)
        )
        window_loss, window_images, tick = 0.0, 0, now
        # Read the previous step's loss while this step's kernels run; all of them when
        # something must see a finished step.
        keep = 0 if needs_everything(state.step) else 1
        while len(waiting) > keep:
            finish_step(waiting.pop(0))
    progress.close()

    # 6. Save: a final checkpoint (so the run can be extended) and the exported adapter.
    accelerator.wait_for_everyone()
    outputs: list[Path] = []
    if accelerator.is_main_process:
        save_checkpoint(
            run_dir,
            state,
            trainable,
            optimizer,
            lr_scheduler,
            generator,
            config.to_dict(),
            config.keep_checkpoints,
        )
        outputs = export(Path(config.output), config.format, total_steps)
    seconds = time.time() - started
    images = state.micro_step * config.batch_size * accelerator.num_processes
    return TrainResult(base, outputs, run_dir, state.step, state.losses, seconds, images / max(seconds, 1e-9))


def _default_sample_prompts(trigger: str | None, items: list[Any]) -> list[str]:
    prompts = [trigger] if trigger else []
    prompts += [item.caption for item in items[:2]]
    return [p for p in prompts if p] or ["a picture"]


def _samples(pipeline, models, prompts, run_dir: Path, step: int, resolution: int, config: TrainConfig):
    for model in models.values():
        model.eval()
    try:
        return render_samples(
            pipeline, prompts, run_dir / "samples", step, resolution, config.sample_steps, config.seed
        )
    finally:
        for model in models.values():
            model.train()


@contextmanager
def _on_device(modules: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """Bring parked (CPU) modules to ``device`` for a moment."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")


def _append_metrics(run_dir: Path, event: StepEvent) -> None:
    record = {
        "step": event.step,
        "loss": event.loss,
        "lr": event.lr,
        "img_s": round(event.images_per_second, 3),
    }
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics of steps after the resumed checkpoint: they are about to be redone."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        write_text(path, "".join(line + "\n" for line in kept))


def _last_checkpoint_text(run_dir: Path) -> str:
    from studio.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
