"""Write the trained adapter: kohya file (+ A1111 sidecar) and/or diffusers file, with metadata.

``training_info`` is the one place a ``TrainConfig`` becomes the file's metadata. Each option is
either written there or named in ``NOT_IN_METADATA`` with the reason, and a test changes every
option in turn, so a new option cannot be left out by accident.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from studio.config import TrainConfig
from studio.data import ScannedDataset, bucket_info, dataset_dirs, tag_frequency
from studio.formats.metadata import TrainingInfo, kohya_metadata
from studio.lora.networks import NetworkSpec
from studio.models.loader import BaseModel

NOT_IN_METADATA: dict[str, str] = {
    "data": "a local path; the file keeps the dataset's folder names, sizes and tags instead",
    "base": "the loaded base is named instead (ss_sd_model_name), which the caller may pass ready-made",
    "base_config": "only how a single-file base was read, not which base it is",
    "run_dir": "a local path for side outputs",
    "format": "the file is the format",
    "steps": "the run's resolved length is written (ss_max_train_steps, ss_steps)",
    "epochs": "the run's resolved epochs are written (ss_num_epochs)",
    "resolution": "the size trained at (the option or the model's own) is written (ss_resolution)",
    "compile": "a speed switch: the trained adapter is the same without it",
    "cuda_graphs": "a speed switch: the trained adapter is the same without it",
    "compile_blocks": "a speed switch: the trained adapter is the same without it",
    "graph_step": "a speed switch: the trained adapter is the same without it",
    "channels_last": "a speed switch: the trained adapter is the same without it",
    "adapter_input_casts": "a speed switch: the trained adapter is the same without it",
    "fused_optimizer": "a speed switch: the trained adapter is the same without it",
    "overlap_steps": "a speed switch: the trained adapter is the same without it",
    "low_memory": "what it switches on is written as those options (checkpointing, text encoder, optimizer)",
    "sample_every": "previews only",
    "sample_prompts": "previews only",
    "sample_steps": "previews only",
    "checkpoint_every": "checkpoints only",
    "keep_checkpoints": "checkpoints only",
    "reg_dir": "a local path; its folders and image counts are written (ss_reg_dataset_dirs, ss_num_reg_images)",
    "resume": "a resumed run trains the same adapter as an uninterrupted one",
    "ema_decay": "written (studio.ema_decay) when --ema is on, the file then holding the EMA weights",
    "validation_dir": "a local path; the validation images are not part of the training set",
    "validate_every": "when the validation loss is computed, not what is trained",
    "log_with": "where the logs go, not what is trained",
    "prodigy_d_coef": "written in ss_optimizer's arguments when the optimizer is Prodigy",
    "prodigy_safeguard_warmup": "written in ss_optimizer's arguments when the optimizer is Prodigy",
    "prodigy_bias_correction": "written in ss_optimizer's arguments when the optimizer is Prodigy",
}

_OPTIMIZERS = {
    "adamw": "AdamW",
    "adamw8bit": "AdamW8bit",
    "prodigy": "Prodigy",
    "adafactor": "Adafactor",
    "schedulefree": "AdamWScheduleFree",
}


def optimizer_text(config: TrainConfig) -> str:
    """``ss_optimizer`` as kohya writes it: the class, then its non-default arguments."""
    args = [f"weight_decay={config.weight_decay}"]
    if config.optimizer == "prodigy":
        args += [
            "decouple=True",
            f"d_coef={config.prodigy_d_coef}",
            f"safeguard_warmup={config.prodigy_safeguard_warmup}",
            f"use_bias_correction={config.prodigy_bias_correction}",
        ]
    return f"{_OPTIMIZERS[config.optimizer]}({','.join(args)})"


def training_info(
    config: TrainConfig,
    base: BaseModel,
    dataset: ScannedDataset,
    resolution: int,
    steps: int,
    started: float,
    epochs: int = 1,
    world_size: int = 1,
) -> TrainingInfo:
    """What the file says about the run: ``config`` plus what the run resolved (size, length, GPUs)."""
    items = [item for item in dataset.items if not item.is_reg]
    reg = dataset.reg_scanned  # with their folders' repeats, as sd-scripts counts them
    network = NetworkSpec.from_config(config)
    return TrainingInfo(
        output_name=Path(config.output).stem,
        family=base.family,
        rank=config.rank,
        alpha=config.effective_alpha,
        trigger=config.trigger or "",
        layers=config.layers,
        network_module=network.kohya_module(),
        network_args=network.kohya_args(),
        train_text_encoder=config.train_text_encoder,
        prediction_type="v_prediction" if config.v_prediction else base.prediction_type,
        resolution=(resolution, resolution),
        num_train_images=sum(item.repeats for item in items),
        num_reg_images=sum(item.repeats for item in reg),
        reg_dataset_dirs=dataset_dirs(reg),
        prior_loss_weight=config.prior_weight,
        tag_frequency=tag_frequency(items),
        dataset_dirs=dataset_dirs(items),
        bucket_info=bucket_info(items),
        enable_bucket=True,
        bucket_step=config.bucket_step,
        min_bucket_reso=min(min(b) for b in dataset.buckets),
        max_bucket_reso=max(max(b) for b in dataset.buckets),
        shuffle_caption=config.shuffle_tags,
        keep_tokens=config.keep_tokens,
        caption_dropout_rate=config.caption_dropout,
        random_crop=config.random_crop,
        cache_latents=not config.random_crop,
        masked_loss=config.masked_loss,
        learning_rate=config.lr,
        unet_lr=config.lr,
        text_encoder_lr=config.effective_te_lr,
        optimizer=optimizer_text(config),
        lr_scheduler=config.lr_scheduler,
        lr_warmup_steps=config.warmup_steps,
        max_train_steps=steps,
        epochs=epochs,
        batch_size=config.batch_size,
        grad_accum=config.gradient_accumulation,
        world_size=world_size,
        gradient_checkpointing=config.gradient_checkpointing,
        fp8_base=config.fp8_base,
        max_grad_norm=config.max_grad_norm,
        mixed_precision=config.mixed_precision,
        noise_offset=config.noise_offset or None,
        min_snr_gamma=config.min_snr_gamma,
        clip_skip=config.clip_skip,
        seed=config.seed,
        started_at=started,
        finished_at=time.time(),
        base_model_name=base.name,
        extra=extra_metadata(config),
    )


def extra_metadata(config: TrainConfig) -> dict[str, Any]:
    """What the trainer adds beyond the fields kohya's writer has: kohya's own key where one
    exists (ss_zero_terminal_snr), else a ``studio.`` key; options left at their default are left out."""
    extra: dict[str, Any] = {}
    if config.ema:
        extra["studio.ema_decay"] = config.ema_decay  # the file holds the EMA weights
    if config.zero_terminal_snr:
        extra["ss_zero_terminal_snr"] = True
    if config.validation_split:
        extra["ss_validation_split"] = config.validation_split  # held out: not in ss_num_train_images
    return extra


def export_adapter(
    config: TrainConfig,
    base: BaseModel,
    lora: dict[tuple[str, str], Any],
    dataset: ScannedDataset,
    resolution: int,
    steps: int,
    started: float,
    epochs: int = 1,
    world_size: int = 1,
) -> list[Path]:
    """Write the files ``config.format`` asks for; returns their paths.

    ``world_size``: the data-parallel processes, for the total batch size (``--gpus``).
    """
    info = training_info(config, base, dataset, resolution, steps, started, epochs, world_size)
    metadata = kohya_metadata(info)
    output = Path(config.output)
    written = []
    if config.format in ("kohya", "both"):
        written.append(base.family.save_kohya_file(output, lora, base.components, metadata))
    if config.format in ("diffusers", "both"):
        target = (
            output
            if config.format == "diffusers"
            else output.with_name(output.stem + ".diffusers.safetensors")
        )
        written.append(base.family.save_diffusers_file(target, lora, base.components, metadata))
    return written
