"""SDXL: 1024 px, two text encoders (CLIP ViT-L + OpenCLIP bigG), pooled text and size ids.

The UNet sees both encoders' penultimate hidden states side by side, plus the second
encoder's pooled output and six size numbers per image (original size, crop corner,
target size), which is what lets SDXL train on crops without learning to draw them.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import DenoiserInput, TextEmbeddings
from studio.families.stable_diffusion import StableDiffusionFamily, is_unet_pipeline


def sdxl_time_ids(
    original_sizes: list[tuple[int, int]],
    crops: list[tuple[int, int]],
    target: tuple[int, int],
    device: Any,
) -> torch.Tensor:
    """SDXL size conditioning: original (h, w), crop top-left (y, x), target (h, w) per sample."""
    rows = [list(o) + list(c) + list(target) for o, c in zip(original_sizes, crops)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


class SDXLFamily(StableDiffusionFamily):
    id = "sdxl"
    display_name = "SDXL"
    default_resolution = 1024
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    full_size = "sdxl"

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def matches(self, components: dict[str, Any]) -> bool:
        if not is_unet_pipeline(components):  # SD3 and Flux have a text_encoder_2 too
            return False
        return components.get("text_encoder_2") is not None or (
            getattr(components["unet"].config, "addition_embed_type", None) == "text_time"
        )

    def matches_checkpoint(self, keys: set[str]) -> bool:
        return any(k.startswith("conditioner.embedders.1.") for k in keys)  # SGM's second embedder

    def encode_tokens(
        self, components: dict[str, Any], tokens: dict[str, torch.Tensor], clip_skip: int | None = None
    ) -> TextEmbeddings:
        """Both encoders' hidden state ``clip_skip`` layers from the end (2, the penultimate, by
        default: SDXL's own conditioning, which is what "clip skip 2" means for Illustrious or Pony)."""
        hidden = []
        pooled = None
        for te_name, _ in self.text_encoders:
            out = components[te_name](tokens[te_name], output_hidden_states=True)
            hidden.append(out.hidden_states[-(clip_skip or 2)])
            if te_name == "text_encoder_2":
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        return torch.cat(hidden, dim=-1), pooled

    def pipeline_clip_skip(self, clip_skip: int | None) -> int | None:
        """diffusers' SDXL pipelines count from the penultimate layer (its 0 is clip skip 2)."""
        return None if not clip_skip or clip_skip == 2 else clip_skip - 2

    def prompt_arguments(
        self, components: dict[str, Any], prompt: str, negative: str, device: Any, clip_skip: int | None
    ) -> dict[str, Any]:
        """diffusers' own ``clip_skip`` (its SDXL path works with transformers 5)."""
        skip = self.pipeline_clip_skip(clip_skip)
        return {
            "prompt": prompt,
            "negative_prompt": negative or None,
            **({} if skip is None else {"clip_skip": skip}),
        }

    def added_conditioning(self, batch: DenoiserInput, dtype: torch.dtype) -> dict[str, Any]:
        time_ids = (batch.conditioning or self.host_conditioning(batch))["time_ids"]
        return {"text_embeds": batch.text[1].to(dtype), "time_ids": time_ids.to(dtype)}

    def host_conditioning(self, batch: DenoiserInput) -> dict[str, torch.Tensor]:
        """The size and crop "micro-conditioning" (from each image's Python numbers)."""
        return {
            "time_ids": sdxl_time_ids(
                batch.original_sizes, batch.crops, batch.target_size, batch.noisy.device
            )
        }

    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon") -> Any:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
        from transformers import CLIPTextModelWithProjection

        from studio.models.tiny import BETAS, tiny_parts, tiny_text_config
        from studio.models.tokenizer import build_tokenizer

        parts = tiny_parts(
            seed,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 * 8 + projection_dim 32
            cross_attention_dim=64,  # te1 hidden 32 + te2 hidden 32
        )
        scheduler = EulerDiscreteScheduler(
            **BETAS, steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type
        )
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(len(parts["tokenizer"])))
        return StableDiffusionXLPipeline(
            **parts,
            text_encoder_2=text_encoder_2,
            tokenizer_2=build_tokenizer(),
            scheduler=scheduler,
        )


SDXL = SDXLFamily()
