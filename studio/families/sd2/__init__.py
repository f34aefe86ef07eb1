"""SD 2.x: 768 px (v-prediction) or 512 px, OpenCLIP ViT-H text encoder, Linear attention projections."""

from __future__ import annotations

from typing import Any

from studio.families.stable_diffusion import StableDiffusionFamily, is_unet_pipeline


class SD2Family(StableDiffusionFamily):
    id = "sd2"
    display_name = "SD 2.x"
    default_resolution = 768
    full_size = "sd21"

    def matches(self, components: dict[str, Any]) -> bool:
        """SD 2.x uses linear attention projections where SD 1.x has 1x1 convs."""
        return is_unet_pipeline(components) and bool(
            getattr(components["unet"].config, "use_linear_projection", False)
        )

    def matches_checkpoint(self, keys: set[str]) -> bool:
        return any(k.startswith("cond_stage_model.model.") for k in keys)  # OpenCLIP's layout

    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon") -> Any:
        from studio.models.tiny import tiny_sd_pipeline

        return tiny_sd_pipeline(
            seed,
            prediction_type,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
        )


SD2 = SD2Family()
