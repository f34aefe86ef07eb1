"""Tiny SD 1.x / 2.x / SDXL pipelines built in code: same classes as the real ones, ~2M params.

They stand in for real bases in tests and in the offline default model, so every code
path (injection, training, export, loading) runs exactly as on a full-size model.
The shapes follow diffusers' own LoRA test-suite (tests/lora/test_lora_layers_sd*.py).
Each family's ``build_tiny`` (``studio/families/*``) picks its UNet and assembles the
pipeline from the parts here.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from studio.models.family import Family, ModelFamily
from studio.models.tokenizer import build_tokenizer

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
TINY_UNET: dict[str, Any] = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def tiny_text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        projection_dim=32,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )


def tiny_parts(seed: int, **unet: Any) -> dict[str, Any]:
    """Tokenizer, UNet (``TINY_UNET`` updated by ``unet``), VAE and first text encoder, each seeded."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    parts: dict[str, Any] = {"tokenizer": tokenizer, "unet": UNet2DConditionModel(**{**TINY_UNET, **unet})}
    torch.manual_seed(seed)
    parts["vae"] = tiny_vae()
    torch.manual_seed(seed)
    parts["text_encoder"] = CLIPTextModel(tiny_text_config(len(tokenizer)))
    return parts


def tiny_sd_pipeline(seed: int, prediction_type: str, **unet: Any) -> StableDiffusionPipeline:
    """An SD 1.x/2.x-class tiny pipeline (one text encoder, DDIM) with the given UNet settings."""
    scheduler = DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )
    return StableDiffusionPipeline(
        **tiny_parts(seed, **unet),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(
    family: Family | str = ModelFamily.SD1, seed: int = 0, prediction_type: str = "epsilon"
) -> Any:
    """A randomly initialised tiny pipeline of ``family`` (fp32, CPU). Same seed, same weights."""
    return ModelFamily(family).build_tiny(seed, prediction_type)
