"""The one value the rest of the code branches on: which Stable Diffusion family a base is."""

from __future__ import annotations

import enum
from typing import Any


class ModelFamily(str, enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """Pipeline attribute names of the text encoders, in kohya order (te1, te2)."""
        return ("text_encoder", "text_encoder_2") if self is ModelFamily.SDXL else ("text_encoder",)

    @property
    def default_resolution(self) -> int:
        return {ModelFamily.SD1: 512, ModelFamily.SD2: 768, ModelFamily.SDXL: 1024}[self]


def detect_family(components: dict[str, Any]) -> ModelFamily:
    """Tell the family from loaded components (not from names or file paths).

    SDXL conditions on pooled text + size ids (``addition_embed_type == "text_time"``) and has a
    second text encoder; SD 2.x uses linear attention projections, SD 1.x uses 1x1 convs.
    """
    unet_config = components["unet"].config
    if getattr(unet_config, "addition_embed_type", None) == "text_time" or components.get("text_encoder_2"):
        return ModelFamily.SDXL
    if getattr(unet_config, "use_linear_projection", False):
        return ModelFamily.SD2
    return ModelFamily.SD1


def prediction_type(scheduler_config: Any) -> str:
    """``epsilon`` or ``v_prediction``, as the base's scheduler config says (SD 2.x 768 is v)."""
    value = getattr(scheduler_config, "prediction_type", None) or scheduler_config.get("prediction_type")
    return value or "epsilon"
