"""LoRA files of the flow transformers (SD3.5, Flux.1): kohya on the fused layout, and diffusers/peft.

kohya: where diffusers splits a layer that the original model fuses (q/k/v; Flux's single
blocks: q/k/v + MLP input), the fused module is written exactly, never approximated:
``down`` is the parts' downs stacked (rank = the sum of their ranks), ``up`` is
block-diagonal (part i's rows only see part i's columns; a part that was not trained is
zero rows), and each part's ``alpha/rank`` is folded into its block of ``up`` so one
``alpha`` is right for the whole module. Then ``(alpha/R)·up@down`` has exactly the rows
``(alphaᵢ/rᵢ)·upᵢ@downᵢ``. ``studio.effective_ranks`` in the metadata says the fused ranks.
This is the layout diffusers' own kohya-Flux converter recognises as block-diagonal and
splits back losslessly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from studio.errors import StudioError
from studio.formats.flow_names import FusedPart, fused_part
from studio.formats.keys import kohya_key
from studio.formats.kohya import LoraDict, base_layer, file_hashes, fit, layer_shapes
from studio.formats.safetensors_io import save_tensors
from studio.lora.tensors import LoraTensors


def fuse_parts(parts: list[tuple[LoraTensors | None, int]]) -> LoraTensors:
    """One LoRA for stacked layers: ``parts`` is (LoRA or None, output rows) in row order."""
    present = [t for t, _ in parts if t is not None]
    scales = [t.alpha / t.rank for t in present]
    scale = scales[0] if all(s == scales[0] for s in scales) else 1.0
    rank = sum(t.rank for t in present)
    up = torch.zeros(sum(rows for _, rows in parts), rank)
    row = col = 0
    for tensors, rows in parts:
        if tensors is not None:
            up[row : row + rows, col : col + tensors.rank] = tensors.up.float() * (
                tensors.alpha / tensors.rank / scale
            )
            col += tensors.rank
        row += rows
    down = torch.cat([t.down.float() for t in present])
    return LoraTensors(down=down, up=up, alpha=scale * rank)


def _is_continuous_norm(components: dict[str, Any], component: str, part: FusedPart) -> bool:
    """SD3's last joint block: diffusers' AdaLayerNormContinuous emits (scale, shift), SAI's (shift, scale)."""
    path = part.path.rsplit(".", 1)[0]
    return (
        bool(part.path)
        and type(components[component].get_submodule(path)).__name__ == "AdaLayerNormContinuous"
    )


def _swap_shift_scale(tensors: LoraTensors) -> LoraTensors:
    scale, shift = tensors.up.chunk(2, dim=0)
    return LoraTensors(tensors.down, torch.cat([shift, scale]), tensors.alpha)


def kohya_modules(lora: LoraDict, components: dict[str, Any], family: Any) -> dict[str, LoraTensors]:
    """kohya module name -> its LoRA (fused modules assembled) for an adapter of ``family``."""
    allowed = (family.denoiser, *family.text_encoder_names)
    groups: dict[str, tuple[str, FusedPart, dict[int, LoraTensors]]] = {}
    for (component, path), tensors in sorted(lora.items()):
        if component not in allowed:
            raise StudioError(f"a {family.display_name} LoRA has no component {component!r} (layer {path})")
        try:
            part = fused_part(family.id, component, path)
        except ValueError as exc:
            raise StudioError(f"layer {component}.{path} has no kohya name: {exc}") from None
        layer = base_layer(components, component, path)
        down_shape, up_shape = layer_shapes(layer, tensors.rank)
        checked = LoraTensors(
            fit(tensors.down, down_shape, f"{component}.{path} down"),
            fit(tensors.up, up_shape, f"{component}.{path} up"),
            tensors.alpha,
        )
        groups.setdefault(part.name, (component, part, {}))[2][part.index] = checked
    modules = {}
    for name, (component, part, present) in groups.items():
        if len(part.parts) == 1:
            modules[name] = (
                _swap_shift_scale(present[0])
                if _is_continuous_norm(components, component, part)
                else present[0]
            )
            continue
        rows = [base_layer(components, component, p).out_features for p in part.parts]
        modules[name] = fuse_parts([(present.get(i), r) for i, r in enumerate(rows)])
    return modules


def to_flow_kohya_state_dict(
    lora: LoraDict, components: dict[str, Any], family: Any, dtype: torch.dtype = torch.float16
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``(tensors, effective ranks of the fused modules)``; alpha stays fp32."""
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, int] = {}
    for name, tensors in sorted(kohya_modules(lora, components, family).items()):
        state[kohya_key(name, "down")] = tensors.down.to(dtype).contiguous()
        state[kohya_key(name, "up")] = tensors.up.to(dtype).contiguous()
        state[kohya_key(name, "alpha")] = torch.tensor(float(tensors.alpha), dtype=torch.float32)
        if name.endswith(("_qkv", "_linear1")):
            fused[name] = tensors.rank
    return state, fused


def save_flow_kohya(
    path: str | Path,
    lora: LoraDict,
    components: dict[str, Any],
    family: Any,
    metadata: dict[str, str],
    *,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``path`` atomically: a kohya sd-scripts LoRA on the original fused layout, hashes included."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise StudioError("a kohya LoRA file must end in .safetensors", path=path)
    state, fused = to_flow_kohya_state_dict(lora, components, family, dtype)
    metadata = {**metadata, "studio.effective_ranks": json.dumps(dict(sorted(fused.items())))}
    if fused:
        metadata["studio.effective_rank"] = str(max(fused.values()))
    metadata = {**metadata, **file_hashes(state, metadata)}
    save_tensors(path, state, metadata)
    return path
