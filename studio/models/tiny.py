"""Tiny SD 1.x / 2.x / SDXL pipelines built in code: same classes as the real ones, ~2M params.

They stand in for real bases in tests and in the offline default model, so every code
path (injection, training, export, loading) runs exactly as on a full-size model.
The shapes follow diffusers' own LoRA test-suite (tests/lora/test_lora_layers_sd*.py).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from studio.models.family import ModelFamily
from studio.models.tokenizer import build_tokenizer

_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _text_config(vocab_size: int) -> CLIPTextConfig:
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


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )


def _unet(family: ModelFamily) -> UNet2DConditionModel:
    common = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    if family is ModelFamily.SD1:
        return UNet2DConditionModel(**common, cross_attention_dim=32)
    if family is ModelFamily.SD2:
        return UNet2DConditionModel(
            **common, cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True
        )
    return UNet2DConditionModel(
        **common,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + projection_dim 32
        cross_attention_dim=64,  # te1 hidden 32 + te2 hidden 32
    )


def build_tiny_pipeline(
    family: ModelFamily | str = ModelFamily.SD1, seed: int = 0, prediction_type: str = "epsilon"
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A randomly initialised tiny pipeline (fp32, CPU). Same seed, same weights."""
    family = ModelFamily(family)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = _unet(family)
    torch.manual_seed(seed)
    vae = _vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    if family is ModelFamily.SDXL:
        scheduler = EulerDiscreteScheduler(
            **_BETAS, steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type
        )
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer)))
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=build_tokenizer(),
            unet=unet,
            scheduler=scheduler,
        )
    scheduler = DDIMScheduler(
        **_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
