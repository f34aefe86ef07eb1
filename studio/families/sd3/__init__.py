"""SD3.5 (Large, Medium): an MMDiT on 2x2 latent patches, two CLIPs + T5 XXL, real CFG.

Text conditioning is the SD3 pipeline's: both CLIPs' penultimate hidden states side by side,
zero-padded to T5's width and followed by T5's tokens along the sequence; the pooled
vector is both CLIPs' projected outputs side by side. The transformer takes the timestep
as ``1000·σ``; ``σ`` is shifted by the scheduler's fixed ``shift`` (3.0 for SD3.5).
Medium's MMDiT-X blocks 0-12 have a second image self-attention (``attn2``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from studio.families.base import DenoiserInput, TextEmbeddings
from studio.families.flow import FlowMatchingFamily, clip_embeddings

_CLIP_ATTN = r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$"
_JOINT_ATTN = (
    r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
)
_SELF_ATTN = r"transformer_blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0)"
_REST = r"transformer_blocks\.\d+\.(norm1\.linear|norm1_context\.linear|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"

# ``cross-attn``: the joint attention (text meets image); ``attn``: plus MMDiT-X's second
# self-attention; ``full``: every Linear of every joint block (modulations and MLPs too).
SD3_LORA_PATTERNS = {
    "cross-attn": {"denoiser": rf"\.{_JOINT_ATTN}$", "text_encoder": _CLIP_ATTN},
    "attn": {"denoiser": rf"\.({_JOINT_ATTN}|{_SELF_ATTN})$", "text_encoder": _CLIP_ATTN},
    "full": {
        "denoiser": rf"\.({_JOINT_ATTN}|{_SELF_ATTN}|{_REST})$",
        "text_encoder": r"\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$",
    },
}
_SAI_JOINT = re.compile(r"(^|\.)joint_blocks\.\d+\.x_block\.attn\.qkv\.weight$")


class SD3Family(FlowMatchingFamily):
    id = "sd3"
    transformer_class_name = "SD3Transformer2DModel"
    hub_id = "stabilityai/stable-diffusion-3.5-large"
    display_name = "SD3.5"
    default_resolution = 1024
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))  # CLIP-L, CLIP-G
    t5 = ("text_encoder_3", "tokenizer_3")
    frozen_encoders = ("text_encoder_3",)
    t5_max_length = 256
    full_size = "sd35-large"
    lora_patterns = SD3_LORA_PATTERNS
    modelspec_id = "stable-diffusion-3-5-large"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    base_model_version = "sd3"

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def matches(self, components: dict[str, Any]) -> bool:
        from diffusers import SD3Transformer2DModel

        return isinstance(components.get("transformer"), SD3Transformer2DModel)

    def matches_checkpoint(self, keys: set[str]) -> bool:
        """SAI's original layout (``joint_blocks.N.x_block.attn.qkv``), bare or under ``model.diffusion_model.``."""
        return any(_SAI_JOINT.search(key) for key in keys)

    def checkpoint_model(self, keys: set[str]) -> str:
        """Which full-size model an SAI checkpoint is: Medium's MMDiT-X blocks have ``x_block.attn2``."""
        return "sd35-medium" if any(".x_block.attn2." in k for k in keys) else "sd35-large"

    def encode_text(self, components: dict[str, Any], captions: list[str], device: Any) -> TextEmbeddings:
        hidden, pooled = zip(
            *(
                clip_embeddings(components[te], components[tok], captions, device)
                for te, tok in self.text_encoders
            )
        )
        t5 = self.t5_hidden(components, captions, device)
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)

    def predict(self, denoiser: Any, batch: DenoiserInput, dtype: torch.dtype) -> torch.Tensor:
        noisy, (hidden, pooled) = batch.noisy, batch.text
        sigma = self.sigmas(batch.scheduler, batch.timesteps, noisy).view(noisy.shape[0])
        return denoiser(
            hidden_states=noisy.to(dtype),
            timestep=(sigma * batch.scheduler.config.num_train_timesteps).to(dtype),
            encoder_hidden_states=hidden.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0]

    def file_metadata(self, metadata: dict[str, str], components: dict[str, Any]) -> dict[str, str]:
        """sd-scripts' ids; Medium is told from Large by its MMDiT-X blocks."""
        values = super().file_metadata(metadata, components)
        if components["transformer"].config.dual_attention_layers:
            values["modelspec.architecture"] = "stable-diffusion-3-5-medium/lora"
        return values

    def kohya_name(self, ref: Any, denoiser_config: Any) -> str:
        from studio.formats.flow_names import sd3_kohya_name

        return sd3_kohya_name(ref.component, ref.path)

    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon") -> Any:
        """A tiny SD3.5-Medium-like pipeline (block 0 has MMDiT-X's second attention)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection

        from studio.models.tiny import tiny_text_config
        from studio.models.tiny_flow import build_t5_tokenizer, seeded, tiny_flow_vae, tiny_t5
        from studio.models.tokenizer import build_tokenizer

        tokenizer, tokenizer_2, tokenizer_3 = build_tokenizer(), build_tokenizer(), build_t5_tokenizer()
        transformer = seeded(
            seed, SD3Transformer2DModel,
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=64,
            qk_norm="rms_norm", dual_attention_layers=(0,),
        )  # fmt: skip
        return StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=seeded(seed, tiny_flow_vae, 1.5305, 0.0609),
            text_encoder=seeded(seed, CLIPTextModelWithProjection, tiny_text_config(len(tokenizer))),
            tokenizer=tokenizer,
            text_encoder_2=seeded(seed + 1, CLIPTextModelWithProjection, tiny_text_config(len(tokenizer_2))),
            tokenizer_2=tokenizer_2,
            text_encoder_3=seeded(seed, tiny_t5, len(tokenizer_3), 64),
            tokenizer_3=tokenizer_3,
            transformer=transformer,
        )


SD3 = SD3Family()
