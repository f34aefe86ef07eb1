"""Write the trained adapter: kohya file (+ A1111 sidecar) and/or diffusers file, with metadata."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from studio.config import TrainConfig
from studio.data import ScannedDataset, bucket_info, dataset_dirs, tag_frequency
from studio.formats.diffusers_format import save_diffusers_lora
from studio.formats.kohya import save_kohya
from studio.formats.metadata import TrainingInfo, kohya_metadata
from studio.models.loader import BaseModel


def training_info(
    config: TrainConfig,
    base: BaseModel,
    dataset: ScannedDataset,
    resolution: int,
    steps: int,
    started: float,
    epochs: int = 1,
) -> TrainingInfo:
    items = dataset.items
    return TrainingInfo(
        output_name=Path(config.output).stem,
        family=base.family,
        rank=config.rank,
        alpha=config.effective_alpha,
        trigger=config.trigger or "",
        preset=config.preset,
        train_text_encoder=config.train_text_encoder,
        prediction_type=base.prediction_type,
        resolution=(resolution, resolution),
        num_train_images=sum(item.repeats for item in items),
        tag_frequency=tag_frequency(items),
        dataset_dirs=dataset_dirs(items),
        bucket_info=bucket_info(items),
        enable_bucket=True,
        min_bucket_reso=min(min(b) for b in dataset.buckets),
        max_bucket_reso=max(max(b) for b in dataset.buckets),
        shuffle_caption=config.shuffle_tags,
        keep_tokens=config.keep_tokens,
        caption_dropout_rate=config.caption_dropout,
        cache_latents=not config.random_crop,
        learning_rate=config.lr,
        unet_lr=config.lr,
        text_encoder_lr=config.effective_te_lr,
        optimizer="AdamW8bit" if config.optimizer == "adamw8bit" else "AdamW",
        lr_scheduler=config.lr_scheduler,
        lr_warmup_steps=config.warmup_steps,
        max_train_steps=steps,
        epochs=epochs,
        batch_size=config.batch_size,
        grad_accum=config.gradient_accumulation,
        gradient_checkpointing=config.gradient_checkpointing,
        mixed_precision=config.mixed_precision,
        noise_offset=config.noise_offset or None,
        min_snr_gamma=config.min_snr_gamma,
        seed=config.seed,
        started_at=started,
        finished_at=time.time(),
        base_model_name=base.name,
    )


def export_adapter(
    config: TrainConfig,
    base: BaseModel,
    lora: dict[tuple[str, str], Any],
    dataset: ScannedDataset,
    resolution: int,
    steps: int,
    started: float,
    epochs: int = 1,
) -> list[Path]:
    """Write the files ``config.format`` asks for; returns their paths."""
    metadata = kohya_metadata(training_info(config, base, dataset, resolution, steps, started, epochs))
    output = Path(config.output)
    written = []
    if config.format in ("kohya", "both"):
        written.append(save_kohya(output, lora, base.components, base.family, metadata))
    if config.format in ("diffusers", "both"):
        target = (
            output
            if config.format == "diffusers"
            else output.with_name(output.stem + ".diffusers.safetensors")
        )
        written.append(save_diffusers_lora(target, lora, base.components, base.family, metadata))
    return written
