"""Which base family a LoRA file was trained for, from what the file itself says.

Evidence, strongest first: the header (``ss_base_model_version``, ``modelspec.architecture``,
``ss_v2``), then key names (only SDXL files have a second text encoder or SGM block
names), then tensor shapes (the cross-attention context width: 768 for SD 1.x, 1024 for
SD 2.x, 2048 for SDXL). ``None`` means the file does not say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from studio.formats.family import metadata_family
from studio.formats.keys import KOHYA, parse_key
from studio.models.family import ModelFamily

FAMILY_NAMES = {ModelFamily.SD1: "SD 1.x", ModelFamily.SD2: "SD 2.x", ModelFamily.SDXL: "SDXL"}
_SGM_MARKS = ("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_")
_CROSS_ATTN_INPUTS = ("attn2_to_k", "attn2.to_k", "attn2_to_v", "attn2.to_v")
_CONTEXT_WIDTHS = {768: ModelFamily.SD1, 1024: ModelFamily.SD2, 2048: ModelFamily.SDXL}


def family_from_metadata(metadata: Mapping[str, str]) -> ModelFamily | None:
    found = metadata_family(metadata)
    return found[0] if found else None


def family_from_keys(keys: Iterable[str]) -> ModelFamily | None:
    for key in keys:
        parsed = parse_key(key)
        if parsed is None:
            continue
        if parsed.component == "text_encoder_2":
            return ModelFamily.SDXL
        if parsed.convention == KOHYA and parsed.module.startswith(_SGM_MARKS):
            return ModelFamily.SDXL
    return None


def family_from_shapes(tensors: Mapping[str, Tensor]) -> ModelFamily | None:
    """Read the context width off a cross-attention key/value LoRA (full-size models only)."""
    for key, tensor in tensors.items():
        parsed = parse_key(key)
        if parsed is None or parsed.role != "down" or tensor.dim() < 2:
            continue
        if any(needle in parsed.module for needle in _CROSS_ATTN_INPUTS):
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
