"""A1111 "LoRA Block Weight" vectors (hako-mikan/sd-webui-lora-block-weight), read as the extension does.

A vector is a preset name (``MIDD``) or comma-separated numbers, one per block:
17 (SD 1.x/2.x LoRA), 26 (SD 1.x/2.x, every block: LyCORIS), 12 (SDXL LoRA) or 20 (SDXL, every
block). The extension widens a shorter vector to its 26 blocks with 0 for the blocks it does
not list (``to26``), and so do we. Block ids are the LDM (compvis) ones: ``BASE`` is the text
encoder(s); ``INnn`` is ``input_blocks.nn`` (``IN00`` = ``conv_in``), ``M00`` the middle block,
``OUTnn`` ``output_blocks.nn``. UNet layers in no block (time embedding, ``conv_out``) keep 1.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from studio.errors import StudioError

BLOCK_IDS = (
    "BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)),
)  # fmt: skip
VECTOR_BLOCKS: dict[int, tuple[str, ...]] = {
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    20: ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9))),
    26: BLOCK_IDS,
}  # fmt: skip
# The extension's built-in presets (DEF_WEIGHT_PRESET of scripts/lora_block_weight.py), all 17 values.
PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
HINT = (
    f"type a preset ({', '.join(PRESETS)}) or 17 / 26 numbers (SD 1.x/2.x) or 12 / 20 (SDXL), "
    "separated by commas"
)
_UNET_LAYER = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.")


def parse_lbw(text: str | None) -> tuple[float, ...] | None:
    """``"MIDD"`` or ``"1,0,…"`` -> the 26 block ratios in ``BLOCK_IDS`` order; None for empty text."""
    text = (text or "").strip()
    if not text:
        return None
    preset = next((name for name in PRESETS if name.lower() == text.lower()), None)
    parts = [p.strip() for p in (PRESETS[preset] if preset else text).split(",")]
    if len(parts) == 1 and not _is_number(parts[0]):
        raise StudioError(f"block weight vector: unknown preset {text!r}", hint=HINT)
    if len(parts) not in VECTOR_BLOCKS:
        raise StudioError(
            f"block weight vector: {len(parts)} values, but it needs 12, 17, 20 or 26", hint=HINT
        )
    bad = next((p for p in parts if not _is_number(p)), None)
    if bad is not None:
        raise StudioError(f"block weight vector: {bad!r} is not a number", hint=HINT)
    ratios = dict.fromkeys(BLOCK_IDS, 0.0)
    ratios.update(zip(VECTOR_BLOCKS[len(parts)], map(float, parts), strict=True))
    return tuple(ratios.values())


def _is_number(text: str) -> bool:
    try:
        return float(text) == float(text) and abs(float(text)) != float("inf")
    except ValueError:
        return False


def layers_per_block(components: Mapping[str, Any]) -> int:
    """The UNet's ``layers_per_block`` (LDM block numbering depends on it); 2, as in SD and SDXL, without one."""
    unet = components.get("unet")
    value = getattr(getattr(unet, "config", None), "layers_per_block", 2)
    return int(value if isinstance(value, int) else value[0])


@functools.lru_cache(maxsize=65536)
def block_index(component: str, path: str, per_block: int = 2) -> int | None:
    """The index in ``BLOCK_IDS`` of the block a layer belongs to; None: in no block (keeps 1).

    LDM numbering: each down block has ``per_block`` layers then a downsampler; each up block
    ``per_block + 1`` layers, the upsampler in its last.
    """
    if component != "unet":
        return 0 if component.startswith("text_encoder") else None
    if path == "conv_in" or path.startswith("conv_in."):
        return BLOCK_IDS.index("IN00")
    if path.startswith("mid_block."):
        return BLOCK_IDS.index("M00")
    m = _UNET_LAYER.match(path)
    if m is None:
        return None
    side, block, kind, layer = m[1], int(m[2]), m[3], int(m[4])
    if side == "down":
        number = (
            (block + 1) * (per_block + 1) if kind == "downsamplers" else 1 + block * (per_block + 1) + layer
        )
        name = f"IN{number:02d}"
    else:
        number = block * (per_block + 1) + (per_block if kind == "upsamplers" else layer)
        name = f"OUT{number:02d}"
    return BLOCK_IDS.index(name) if name in BLOCK_IDS else None
