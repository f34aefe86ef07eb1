"""Which base family a LoRA file's header says it was trained for.

A file-format fact (kohya's ``ss_base_model_version``/``ss_v2`` and the modelspec
``modelspec.architecture``), read both by ``studio inspect`` and by the adapter loader.
"""

from __future__ import annotations

from collections.abc import Mapping

from studio.families import FLUX, SD3
from studio.models.family import ModelFamily

# Header keys that name the base, strongest first, with the value prefixes each family uses.
_METADATA_MARKS = (
    (
        "ss_base_model_version",
        (
            ("sdxl", ModelFamily.SDXL),
            ("sd_v2", ModelFamily.SD2),
            ("sd_v1", ModelFamily.SD1),
            ("flux1", FLUX),
            ("sd3", SD3),
        ),
    ),
    (
        "modelspec.architecture",
        (
            ("stable-diffusion-xl", ModelFamily.SDXL),
            ("stable-diffusion-v2", ModelFamily.SD2),
            ("stable-diffusion-v1", ModelFamily.SD1),
            ("flux-1", FLUX),  # sd-scripts: flux-1-dev, flux-1-schnell
            ("stable-diffusion-3", SD3),  # stable-diffusion-3-medium, -3.5-large (the studio: -3-5-)
        ),
    ),
    ("ss_v2", (("true", ModelFamily.SD2),)),
)


def metadata_family(metadata: Mapping[str, str]) -> tuple[ModelFamily, str] | None:
    """``(family, the header key that says so)``, or None when the header names no base."""
    for key, prefixes in _METADATA_MARKS:
        value = str(metadata.get(key, "")).lower()
        for prefix, family in prefixes:
            if value.startswith(prefix):
                return family, key
    return None
