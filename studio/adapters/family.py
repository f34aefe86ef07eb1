"""Which base family a LoRA file was trained for, from what the file itself says.

Evidence, strongest first: the header (``ss_base_model_version``, ``modelspec.architecture``,
``ss_v2``), then key names (sd-scripts' original-layout block names: Flux's
``double_blocks``/``single_blocks``, SD3's ``joint_blocks``; diffusers' Flux-only
``single_transformer_blocks``; only SDXL files have a second text encoder on a UNet, or SGM
block names), then tensor shapes (the cross-attention context width: 768 for SD 1.x, 1024
for SD 2.x, 2048 for SDXL). ``None`` means the file does not say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from studio.families import Family, get_family
from studio.formats.family import metadata_family
from studio.formats.flow_names import flow_family_id
from studio.formats.keys import KOHYA, parse_key
from studio.models.family import ModelFamily


class _Names(dict):
    """A family's name for people: its ``display_name`` (any registered family)."""

    def __missing__(self, family: Family) -> str:
        return family.display_name


FAMILY_NAMES = _Names()
_SGM_MARKS = ("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_")
_CROSS_ATTN_INPUTS = ("attn2_to_k", "attn2.to_k", "attn2_to_v", "attn2.to_v")
_CONTEXT_WIDTHS = {768: ModelFamily.SD1, 1024: ModelFamily.SD2, 2048: ModelFamily.SDXL}


def family_from_metadata(metadata: Mapping[str, str]) -> ModelFamily | None:
    found = metadata_family(metadata)
    return found[0] if found else None


def family_from_keys(keys: Iterable[str]) -> ModelFamily | None:
    """A flow family's block names win; a transformer file that names neither says nothing."""
    sdxl = transformer = False
    for key in keys:
        parsed = parse_key(key)
        if parsed is None:
            continue
        module = parsed.module
        if found := flow_family_id(module):
            return get_family(found)
        transformer = transformer or module.startswith("transformer.") or parsed.component == "transformer"
        sdxl = sdxl or parsed.component == "text_encoder_2"
        sdxl = sdxl or (parsed.convention == KOHYA and module.startswith(_SGM_MARKS))
    return None if transformer or not sdxl else ModelFamily.SDXL


def family_from_shapes(tensors: Mapping[str, Tensor]) -> ModelFamily | None:
    """Read the context width off a cross-attention key/value LoRA (full-size models only)."""
    for key, tensor in tensors.items():
        parsed = parse_key(key)
        if parsed is None or parsed.role != "down" or tensor.dim() < 2:
            continue
        if parsed.component == "transformer" or parsed.module.startswith(
            ("transformer.", "transformer_blocks.")
        ):
            continue  # SD3.5-Medium's attn2 is an image self-attention, not a UNet's cross-attention
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
