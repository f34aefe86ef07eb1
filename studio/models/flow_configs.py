"""Configs of the real SD3.5 (Large, Medium) and Flux.1 (dev, schnell) bases, to build them offline.

As for the UNet families (``studio.models.configs``), a meta-device build has every module
name and shape of the real checkpoint at no cost: enough to check LoRA names, module counts
and shapes at full size. The transformer dicts are the Hugging Face repos' ``transformer/
config.json`` (stabilityai/stable-diffusion-3.5-large and -medium, black-forest-labs/FLUX.1-dev
and -schnell, which differ only in ``guidance_embeds``); the text encoders are CLIP ViT-L
(both families), OpenCLIP bigG (SD3) and the T5 v1.1 XXL encoder (both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from studio.models.configs import CLIP_L_TEXT_ENCODER, OPENCLIP_BIGG_TEXT_ENCODER

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
FLUX_SCHNELL_TRANSFORMER: dict[str, Any] = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}

SD35_LARGE_TRANSFORMER: dict[str, Any] = {
    "_class_name": "SD3Transformer2DModel",
    "attention_head_dim": 64,
    "caption_projection_dim": 2432,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 38,
    "num_layers": 38,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    **SD35_LARGE_TRANSFORMER,
    "caption_projection_dim": 1536,
    "dual_attention_layers": list(range(13)),  # MMDiT-X: a second self-attention in blocks 0-12
    "num_attention_heads": 24,
    "num_layers": 24,
    "pos_embed_max_size": 384,
}

T5_XXL_ENCODER: dict[str, Any] = {  # google/t5-v1_1-xxl, encoder only (text_encoder_2/3 of the repos)
    "architectures": ["T5EncoderModel"],
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}
CLIP_L_WITH_PROJECTION = {**CLIP_L_TEXT_ENCODER, "architectures": ["CLIPTextModelWithProjection"]}

_FLOW_VAE = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
FLUX_VAE = {**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
SD3_VAE = {**_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}


@dataclass(frozen=True)
class FlowModel:
    """One real flow-matching base: its family id and the configs of its parts."""

    family: str
    transformer: dict[str, Any]
    text_encoders: dict[str, tuple[type, dict[str, Any]]]  # pipeline attribute -> (class, config)
    vae: dict[str, Any]


_SD3_TEXT = {
    "text_encoder": (CLIPTextModelWithProjection, CLIP_L_WITH_PROJECTION),
    "text_encoder_2": (CLIPTextModelWithProjection, OPENCLIP_BIGG_TEXT_ENCODER),
    "text_encoder_3": (T5EncoderModel, T5_XXL_ENCODER),
}
_FLUX_TEXT = {
    "text_encoder": (CLIPTextModel, CLIP_L_TEXT_ENCODER),
    "text_encoder_2": (T5EncoderModel, T5_XXL_ENCODER),
}
FLOW_FULL_SIZE: dict[str, FlowModel] = {
    "sd35-large": FlowModel("sd3", SD35_LARGE_TRANSFORMER, _SD3_TEXT, SD3_VAE),
    "sd35-medium": FlowModel("sd3", SD35_MEDIUM_TRANSFORMER, _SD3_TEXT, SD3_VAE),
    "flux1-dev": FlowModel("flux", FLUX_DEV_TRANSFORMER, _FLUX_TEXT, FLUX_VAE),
    "flux1-schnell": FlowModel("flux", FLUX_SCHNELL_TRANSFORMER, _FLUX_TEXT, FLUX_VAE),
}


def _text_encoder(cls: type, config: dict[str, Any]) -> Any:
    if cls is T5EncoderModel:
        return cls(T5Config.from_dict(config))
    return cls(CLIPTextConfig.from_dict(config))


def build_flow_components(
    name: str,
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.float32,
    with_vae: bool = False,
    with_text_encoders: bool = True,
) -> dict[str, Any]:
    """``{"transformer", "text_encoder"...[, "vae"]}`` of a full-size flow model, randomly initialised."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    spec = FLOW_FULL_SIZE[name]
    transformer_class = FluxTransformer2DModel if spec.family == "flux" else SD3Transformer2DModel
    with torch.device(device):
        components: dict[str, Any] = {"transformer": transformer_class.from_config(spec.transformer)}
        for attribute, (cls, config) in spec.text_encoders.items() if with_text_encoders else ():
            components[attribute] = _text_encoder(cls, config)
        if with_vae:
            components["vae"] = AutoencoderKL.from_config(spec.vae)
    for model in components.values():
        model.eval()
        if dtype != torch.float32:
            model.to(dtype=dtype)
    return components
