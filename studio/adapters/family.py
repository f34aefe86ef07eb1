"""Which base family a LoRA file was trained for, from what the file itself says.

Evidence, strongest first: the header (``ss_base_model_version``, ``modelspec.architecture``,
``ss_v2``), then key names (only SDXL files have a second text encoder or SGM block
names), then tensor shapes (the cross-attention context width: 768 for SD 1.x, 1024 for
SD 2.x, 2048 for SDXL). ``None`` means the file does not say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from studio.models.family import ModelFamily

FAMILY_NAMES = {ModelFamily.SD1: "SD 1.x", ModelFamily.SD2: "SD 2.x", ModelFamily.SDXL: "SDXL"}
_SDXL_KEY_MARKS = (
    "lora_te2_",
    "lora_unet_input_blocks_",
    "lora_unet_output_blocks_",
    "lora_unet_middle_block_",
)
_CONTEXT_WIDTHS = {768: ModelFamily.SD1, 1024: ModelFamily.SD2, 2048: ModelFamily.SDXL}


# Header keys that name the base, strongest first, with the value prefixes each family uses.
_METADATA_MARKS = (
    (
        "ss_base_model_version",
        (("sdxl", ModelFamily.SDXL), ("sd_v2", ModelFamily.SD2), ("sd_v1", ModelFamily.SD1)),
    ),
    (
        "modelspec.architecture",
        (
            ("stable-diffusion-xl", ModelFamily.SDXL),
            ("stable-diffusion-v2", ModelFamily.SD2),
            ("stable-diffusion-v1", ModelFamily.SD1),
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


def family_from_metadata(metadata: Mapping[str, str]) -> ModelFamily | None:
    found = metadata_family(metadata)
    return found[0] if found else None


def family_from_keys(keys: Iterable[str]) -> ModelFamily | None:
    for key in keys:
        if key.startswith(_SDXL_KEY_MARKS) or key.startswith("text_encoder_2."):
            return ModelFamily.SDXL
    return None


def family_from_shapes(tensors: Mapping[str, Tensor]) -> ModelFamily | None:
    """Read the context width off a cross-attention key/value LoRA (full-size models only)."""
    for key, tensor in tensors.items():
        cross_attn_in = (
            "attn2_to_k" in key or "attn2.to_k" in key or "attn2_to_v" in key or "attn2.to_v" in key
        )
        is_down = "lora_down" in key or "lora_A" in key or ".down." in key
        if cross_attn_in and is_down and tensor.dim() >= 2:
            return _CONTEXT_WIDTHS.get(tensor.shape[1])
    return None


def declared_family(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> tuple[ModelFamily | None, str]:
    """``(family, how we know)`` from header and key names: the evidence good enough to refuse on."""
    if family := family_from_metadata(metadata):
        return family, "its metadata"
    if family := family_from_keys(tensors):
        return family, "its key names"
    return None, ""
