"""kohya sd-scripts module names for the flow transformers, on the original (fused) layouts.

sd-scripts trains Flux on BFL's layout (``networks/lora_flux.py``) and SD3 on SAI's MMDiT
(``networks/lora_sd3.py``), where one Linear computes q, k and v together (Flux's single
blocks: q, k, v and the MLP's input, ``linear1``). diffusers splits those into
``to_q``/``to_k``/``to_v`` (``proj_mlp``). A split layer therefore maps to a *part* of a
fused kohya module: ``FusedPart(name, index, parts)``, and the writer
(``studio.formats.flow_lora``) assembles the parts exactly. Names are
``lora_unet_`` + the original path with ``.`` as ``_``; CLIP text encoders are
``lora_te1`` (CLIP-L) and ``lora_te2`` (SD3's CLIP-G), as sd-scripts names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.formats.keys import TRANSFORMER_PREFIXES, UNET_PREFIX
from studio.formats.kohya_names import canonical_text_encoder_path


@dataclass(frozen=True)
class FusedPart:
    """Where a diffusers layer lands in a kohya module: part ``index`` of ``parts`` (rows stacked)."""

    name: str
    index: int = 0
    parts: tuple[str, ...] = ("",)  # diffusers paths of every part, in row order (unfused: ("",))
    path: str = ""  # the diffusers path of this layer


_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
_ADD_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
_SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")

FLUX_DOUBLE: dict[
    str, tuple[str, tuple[str, ...] | None]
] = {  # diffusers path in block -> (BFL name, fused parts)
    **{p: ("img_attn.qkv", _QKV) for p in _QKV},
    **{p: ("txt_attn.qkv", _ADD_QKV) for p in _ADD_QKV},
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
    "norm1.linear": ("img_mod.lin", None),
    "norm1_context.linear": ("txt_mod.lin", None),
}
FLUX_SINGLE: dict[str, tuple[str, tuple[str, ...] | None]] = {
    **{p: ("linear1", _SINGLE_LINEAR1) for p in _SINGLE_LINEAR1},
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation.lin", None),
}
SD3_JOINT: dict[str, tuple[str, tuple[str, ...] | None]] = {
    **{p: ("x_block.attn.qkv", _QKV) for p in _QKV},
    **{p: ("context_block.attn.qkv", _ADD_QKV) for p in _ADD_QKV},
    **{f"attn2.{p[5:]}": ("x_block.attn2.qkv", tuple(f"attn2.{q[5:]}" for q in _QKV)) for p in _QKV},
    "attn.to_out.0": ("x_block.attn.proj", None),
    "attn.to_add_out": ("context_block.attn.proj", None),
    "attn2.to_out.0": ("x_block.attn2.proj", None),
    "ff.net.0.proj": ("x_block.mlp.fc1", None),
    "ff.net.2": ("x_block.mlp.fc2", None),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", None),
    "ff_context.net.2": ("context_block.mlp.fc2", None),
    "norm1.linear": ("x_block.adaLN_modulation.1", None),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", None),
}
_BLOCKS = {
    "flux": {
        "transformer_blocks": ("double_blocks", FLUX_DOUBLE),
        "single_transformer_blocks": ("single_blocks", FLUX_SINGLE),
    },
    "sd3": {"transformer_blocks": ("joint_blocks", SD3_JOINT)},
}
_TE_PREFIX = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def _kohya(path: str) -> str:
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


def fused_part(family_id: str, component: str, path: str) -> FusedPart:
    """The kohya module (and part of it) a diffusers layer of ``family_id`` belongs to."""
    if component != "transformer":
        if component not in _TE_PREFIX:
            raise ValueError(f"kohya files of this family do not name {component} layers")
        return FusedPart(
            f"{_TE_PREFIX[component]}_{canonical_text_encoder_path(path).replace('.', '_')}", path=path
        )
    m = re.fullmatch(r"(single_transformer_blocks|transformer_blocks)\.(\d+)\.(.+)", path)
    blocks = _BLOCKS[family_id]
    if not m or m[1] not in blocks:
        raise ValueError(
            f"no kohya name for transformer layer {path!r} (outside the blocks sd-scripts adapts)"
        )
    block_name, table = blocks[m[1]]
    if m[3] not in table:
        raise ValueError(f"no kohya name for transformer layer {path!r}")
    original, parts = table[m[3]]
    name = _kohya(f"{block_name}.{m[2]}.{original}")
    if parts is None:
        return FusedPart(name, path=path)
    return FusedPart(name, parts.index(m[3]), tuple(f"{m[1]}.{m[2]}.{p}" for p in parts), path)


def flux_kohya_name(component: str, path: str) -> str:
    return fused_part("flux", component, path).name


def sd3_kohya_name(component: str, path: str) -> str:
    return fused_part("sd3", component, path).name


# Module-name marks only one flow family's adapter files carry: sd-scripts' original-layout
# blocks, and diffusers' Flux-only single-stream blocks (dotted, or flattened by OneTrainer and
# SimpleTuner).
_FILE_MARKS = (
    ("lora_unet_double_blocks_", "flux"),
    ("lora_unet_single_blocks_", "flux"),
    ("lora_unet_joint_blocks_", "sd3"),
    *((f"{prefix}_single_transformer_blocks_", "flux") for prefix in TRANSFORMER_PREFIXES),
)
_BLOCK_NUMBER = re.compile(
    r"^lora_unet_(double_blocks|single_blocks|joint_blocks)_(\d+)_"
    rf"|(?:^|\.|^(?:{'|'.join(TRANSFORMER_PREFIXES)})_)(single_transformer_blocks|transformer_blocks)[._](\d+)[._]"
)


def flow_family_id(module: str) -> str | None:
    """``"flux"`` / ``"sd3"`` when a file's module name (kohya or diffusers) says which, else None."""
    if found := next((family for mark, family in _FILE_MARKS if module.startswith(mark)), None):
        return found
    return "flux" if "single_transformer_blocks." in module else None


def block_of(module: str, family_id: str) -> tuple[str, int] | None:
    """``(original block list, number)`` of a flow module: ``("double_blocks", 3)``; None outside the blocks."""
    m = _BLOCK_NUMBER.search(module)
    if m is None:
        return None
    if m[1]:
        return m[1], int(m[2])
    if m[3] not in _BLOCKS[family_id]:
        return None
    return _BLOCKS[family_id][m[3]][0], int(m[4])
