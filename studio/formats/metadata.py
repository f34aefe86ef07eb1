"""The ``__metadata__`` of an exported LoRA, written the way kohya sd-scripts writes it.

AUTOMATIC1111 reads it to decide which base a LoRA belongs to (and hides it under another
base), to name it (``ss_output_name``), and to show its training tags; Civitai and other
tools read the same keys. So the keys, and the spelling of their values (``str(v)``:
``True``/``False``/``None``, tuples as ``(512, 512)``, nested values as JSON), follow
sd-scripts' ``train_network.py`` and ``library/sai_model_spec.py`` exactly.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from studio.models.family import ModelFamily

SAI_MODEL_SPEC = "1.0.1"
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


@dataclass
class TrainingInfo:
    """Everything about a training run that goes into the file (plain values, no live objects)."""

    output_name: str
    family: ModelFamily
    rank: int
    alpha: float
    trigger: str = ""
    layers: str = "cross-attn"  # the layer set adapted (studio.lora.targets)
    network_module: str = "networks.lora"  # sd-scripts' LoRA; LyCORIS files say lycoris.kohya
    network_args: dict[str, Any] = field(default_factory=dict)
    train_text_encoder: bool = True
    prediction_type: str = "epsilon"  # or "v_prediction"
    resolution: tuple[int, int] | None = None  # (width, height); None: the family's default
    # dataset
    num_train_images: int = 0
    num_reg_images: int = 0
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # {dir name: {tag: count}}
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)  # {dir: {n_repeats, img_count}}
    reg_dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    bucket_info: dict[str, Any] | None = None
    enable_bucket: bool = False
    bucket_step: int | None = None
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    random_crop: bool = False
    cache_latents: bool = False
    masked_loss: bool = False
    # optimisation
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer: str = "AdamW"  # sd-scripts' spelling: the class, then its arguments: AdamW(weight_decay=0.01)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 0
    steps: int | None = None  # steps done when saved; None: max_train_steps
    epochs: int = 1
    epoch: int | None = None  # epoch when saved; None: epochs
    batch_size: int = 1
    grad_accum: int = 1
    world_size: int = 1
    gradient_checkpointing: bool = False
    fp8_base: bool = False
    max_grad_norm: float | None = None
    mixed_precision: str = "no"
    noise_offset: float | None = None
    min_snr_gamma: float | None = None
    prior_loss_weight: float = 1.0
    clip_skip: int | None = None
    max_token_length: int | None = None
    seed: int | None = None
    # provenance
    started_at: float = 0.0  # unix time
    finished_at: float | None = None
    base_model_name: str = ""
    base_model_hash: str | None = None  # sha256 of the base checkpoint, if known
    title: str = ""  # default: output_name
    description: str = ""
    author: str = ""
    license: str = ""
    tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # further ss_* / studio.* keys, written as given


def base_model_version(family: ModelFamily, prediction_type: str) -> str:
    """sd-scripts' ``ss_base_model_version``: sd_v1, sd_v2, sd_v2_v (v-prediction), sdxl_base_v1-0."""
    if family is ModelFamily.SDXL:
        return "sdxl_base_v1-0"
    name = "sd_v2" if family is ModelFamily.SD2 else "sd_v1"
    return name + "_v" if prediction_type == "v_prediction" else name


def modelspec_architecture(family: ModelFamily, prediction_type: str) -> str:
    if family is ModelFamily.SDXL:
        return "stable-diffusion-xl-v1-base/lora"
    if family is ModelFamily.SD2:
        return (
            "stable-diffusion-v2-768-v/lora"
            if prediction_type == "v_prediction"
            else "stable-diffusion-v2-512/lora"
        )
    return "stable-diffusion-v1/lora"


def studio_version() -> str:
    try:
        return version("sd-style-studio")
    except PackageNotFoundError:
        return "unknown"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def modelspec_metadata(
    family: ModelFamily,
    prediction_type: str,
    *,
    title: str,
    resolution: tuple[int, int] | None = None,
    date: float | None = None,
    trigger: str = "",
    description: str = "",
    author: str = "",
    license: str = "",
    tags: Sequence[str] = (),
    encoder_layer: int | None = None,
) -> dict[str, str]:
    """The ``modelspec.*`` keys (SAI ModelSpec 1.0.1, as sd-scripts writes them) of a LoRA for
    ``family``; ``resolution`` None: the family's native size; ``date`` None: now."""
    side = family.default_resolution
    width, height = resolution or (side, side)
    values: dict[str, Any] = {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        "modelspec.architecture": modelspec_architecture(family, prediction_type),
        "modelspec.implementation": SGM_IMPLEMENTATION if family is ModelFamily.SDXL else "diffusers",
        "modelspec.title": title,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": _iso(time.time() if date is None else date),
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
    }
    if encoder_layer is not None:
        values["modelspec.encoder_layer"] = encoder_layer
    optional = {
        "modelspec.trigger_phrase": trigger,
        "modelspec.description": description,
        "modelspec.author": author,
        "modelspec.license": license,
        "modelspec.tags": ", ".join(tags),
    }
    values.update({key: value for key, value in optional.items() if value})
    return {key: str(value) for key, value in values.items()}


def metadata_resolution(metadata: dict[str, str]) -> tuple[int, int] | None:
    """The training size a file states: ``modelspec.resolution`` ("512x512"), else ``ss_resolution``
    ("(512, 512)"); None when it states neither or something unreadable."""
    for key in ("modelspec.resolution", "ss_resolution"):
        numbers = re.findall(r"\d+", metadata.get(key) or "")
        if len(numbers) == 2 and all(int(n) > 0 for n in numbers):
            return int(numbers[0]), int(numbers[1])
    return None


def kohya_metadata(info: TrainingInfo) -> dict[str, str]:
    """``ss_*``, ``modelspec.*`` and ``studio.*`` metadata for ``info``; every value a string."""
    family = ModelFamily(info.family)
    side = family.default_resolution
    width, height = info.resolution or (side, side)
    steps = info.max_train_steps if info.steps is None else info.steps
    values: dict[str, Any] = {
        "ss_network_module": info.network_module,
        "ss_network_dim": int(info.rank),
        "ss_network_alpha": float(info.alpha),
        "ss_network_args": json.dumps(info.network_args),
        "ss_network_dropout": None,
        "ss_base_model_version": base_model_version(family, info.prediction_type),
        "ss_v2": family is ModelFamily.SD2,
        "ss_output_name": info.output_name,
        "ss_sd_model_name": info.base_model_name,
        "ss_resolution": (width, height),
        "ss_num_train_images": info.num_train_images,
        "ss_num_reg_images": info.num_reg_images,
        "ss_tag_frequency": json.dumps(info.tag_frequency),
        "ss_dataset_dirs": json.dumps(info.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(info.reg_dataset_dirs),
        "ss_bucket_info": json.dumps(info.bucket_info),
        "ss_enable_bucket": info.enable_bucket,
        "ss_min_bucket_reso": info.min_bucket_reso,
        "ss_max_bucket_reso": info.max_bucket_reso,
        "ss_shuffle_caption": info.shuffle_caption,
        "ss_keep_tokens": info.keep_tokens,
        "ss_caption_dropout_rate": info.caption_dropout_rate,
        "ss_caption_tag_dropout_rate": info.caption_tag_dropout_rate,
        "ss_flip_aug": info.flip_aug,
        "ss_color_aug": False,  # the studio has no colour augmentation
        "ss_random_crop": info.random_crop,
        "ss_cache_latents": info.cache_latents,
        "ss_masked_loss": info.masked_loss,
        "ss_learning_rate": info.learning_rate,
        "ss_unet_lr": info.unet_lr,
        "ss_text_encoder_lr": info.text_encoder_lr if info.train_text_encoder else None,
        "ss_optimizer": info.optimizer,
        "ss_lr_scheduler": info.lr_scheduler,
        "ss_lr_warmup_steps": info.lr_warmup_steps,
        "ss_max_train_steps": info.max_train_steps,
        "ss_steps": steps,
        "ss_num_epochs": info.epochs,
        "ss_epoch": info.epochs if info.epoch is None else info.epoch,
        "ss_batch_size_per_device": info.batch_size,
        "ss_total_batch_size": info.batch_size * info.grad_accum * info.world_size,
        "ss_gradient_accumulation_steps": info.grad_accum,
        "ss_gradient_checkpointing": info.gradient_checkpointing,
        "ss_fp8_base": info.fp8_base,
        "ss_max_grad_norm": info.max_grad_norm,
        "ss_mixed_precision": info.mixed_precision,
        "ss_full_fp16": False,
        "ss_noise_offset": info.noise_offset,
        "ss_min_snr_gamma": info.min_snr_gamma,
        "ss_prior_loss_weight": info.prior_loss_weight,
        "ss_clip_skip": info.clip_skip,
        "ss_max_token_length": info.max_token_length,
        "ss_seed": info.seed,
        "ss_training_started_at": info.started_at,
        "ss_training_finished_at": info.finished_at,
        "studio.version": studio_version(),
        "studio.layers": info.layers,
        "studio.train_text_encoder": info.train_text_encoder,
    }
    if info.bucket_step is not None:
        values["studio.bucket_step"] = info.bucket_step
    if info.base_model_hash:
        values["ss_new_sd_model_hash"] = info.base_model_hash
    values.update(info.extra)
    metadata = {key: str(value) for key, value in values.items()}
    metadata.update(
        modelspec_metadata(
            family,
            info.prediction_type,
            title=info.title or info.output_name,
            resolution=(width, height),
            date=info.finished_at or info.started_at,
            trigger=info.trigger,
            description=info.description,
            author=info.author,
            license=info.license,
            tags=info.tags,
            encoder_layer=info.clip_skip,
        )
    )
    return metadata
