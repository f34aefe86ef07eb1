"""Configs of the real SD 1.5, SD 2.1 and SDXL base models, to build full-size stand-ins offline.

Built on the ``meta`` device they cost no memory and no download, yet have every module name
and shape of the real checkpoint: enough to check exported LoRA names and shapes against
full-size models, and (on a real device, randomly initialised) to benchmark at real size.

The SD 1.5 and SDXL dicts are the Hugging Face repos' ``config.json`` files verbatim
(runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0); SD 2.1 is
stabilityai/stable-diffusion-2-1 (768, v-prediction), whose text encoder is OpenCLIP ViT-H
with its last layer dropped (23 of 24 layers), stored as a diffusers ``CLIPTextModel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from studio.models.family import ModelFamily

SD15_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

CLIP_L_TEXT_ENCODER: dict[str, Any] = {  # OpenAI CLIP ViT-L/14 text tower (SD 1.5, SDXL te1)
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

SD21_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": True,
    "use_linear_projection": True,
}

OPENCLIP_H_TEXT_ENCODER: dict[str, Any] = {  # SD 2.x: OpenCLIP ViT-H/14 text tower minus its last layer
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "vocab_size": 49408,
}

SDXL_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

OPENCLIP_BIGG_TEXT_ENCODER: dict[str, Any] = {  # SDXL te2: OpenCLIP ViT-bigG/14 text tower
    "architectures": ["CLIPTextModelWithProjection"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "pad_token_id": 1,
    "projection_dim": 1280,
    "vocab_size": 49408,
}

SD_VAE: dict[str, Any] = {  # SD 1.5 and SD 2.x (SDXL's VAE has the same shape, other scaling)
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SDXL_VAE: dict[str, Any] = {**SD_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}


@dataclass(frozen=True)
class FullSizeModel:
    """One real base model: its family and the configs of its trainable parts."""

    family: ModelFamily
    unet: dict[str, Any]
    text_encoders: dict[str, tuple[type, dict[str, Any]]]  # pipeline attribute -> (class, config)
    vae: dict[str, Any]


FULL_SIZE: dict[str, FullSizeModel] = {
    "sd15": FullSizeModel(
        ModelFamily.SD1, SD15_UNET, {"text_encoder": (CLIPTextModel, CLIP_L_TEXT_ENCODER)}, SD_VAE
    ),
    "sd21": FullSizeModel(
        ModelFamily.SD2, SD21_UNET, {"text_encoder": (CLIPTextModel, OPENCLIP_H_TEXT_ENCODER)}, SD_VAE
    ),
    "sdxl": FullSizeModel(
        ModelFamily.SDXL,
        SDXL_UNET,
        {
            "text_encoder": (CLIPTextModel, CLIP_L_TEXT_ENCODER),
            "text_encoder_2": (CLIPTextModelWithProjection, OPENCLIP_BIGG_TEXT_ENCODER),
        },
        SDXL_VAE,
    ),
}


def full_size_model(name: str) -> FullSizeModel:
    try:
        return FULL_SIZE[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(FULL_SIZE)}") from None


def build_components(
    name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32, with_vae: bool = False
) -> dict[str, Any]:
    """``{"unet", "text_encoder"[, "text_encoder_2"][, "vae"]}`` of a full-size model, randomly initialised.

    SD3.5 and Flux.1 names (``studio.models.flow_configs``) give their transformer and encoders.
    """
    from studio.models.flow_configs import FLOW_FULL_SIZE, build_flow_components

    if name in FLOW_FULL_SIZE:
        return build_flow_components(name, device, dtype, with_vae)
    spec = full_size_model(name)
    with torch.device(device):
        components: dict[str, Any] = {"unet": UNet2DConditionModel.from_config(spec.unet)}
        for attribute, (cls, config) in spec.text_encoders.items():
            components[attribute] = cls(CLIPTextConfig.from_dict(config))
        if with_vae:
            components["vae"] = AutoencoderKL.from_config(spec.vae)
    for model in components.values():
        model.eval()
        if dtype != torch.float32:
            model.to(dtype=dtype)
    return components


def build_meta_components(name: str, with_vae: bool = False) -> dict[str, Any]:
    """Full-size components on the ``meta`` device: real names and shapes, no memory, instant."""
    return build_components(name, "meta", with_vae=with_vae)
