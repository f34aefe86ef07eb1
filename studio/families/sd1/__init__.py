"""SD 1.x: 512 px, one CLIP ViT-L text encoder, UNet attention projections as 1x1 convs."""

from __future__ import annotations

from typing import Any

from studio.families.stable_diffusion import StableDiffusionFamily, is_unet_pipeline


class SD1Family(StableDiffusionFamily):
    id = "sd1"
    display_name = "SD 1.x"
    default_resolution = 512
    full_size = "sd15"

    def matches(self, components: dict[str, Any]) -> bool:
        return is_unet_pipeline(components)  # the catch-all of the UNet families (checked last)

    def matches_checkpoint(self, keys: set[str]) -> bool:
        return True  # original SD 1.x checkpoints have no telling key; the other families do

    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon") -> Any:
        from studio.models.tiny import tiny_sd_pipeline

        return tiny_sd_pipeline(seed, prediction_type, cross_attention_dim=32)


SD1 = SD1Family()
