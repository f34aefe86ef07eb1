"""kohya sd-scripts LoRA files: the one format AUTOMATIC1111, ComfyUI, sd-scripts and diffusers all load.

LoHa / LoKr adapters (and DoRA's ``dora_scale``) are written as LyCORIS writes them into the same
layout (``<name>.hada_w1_a``, ``<name>.lokr_w1``, ``<name>.alpha``), which A1111, ComfyUI and
LyCORIS read; diffusers reads plain LoRA only. A plain LoRA layer is exactly three tensors, ``<name>.lora_down.weight`` [r, in(, kh, kw)],
``<name>.lora_up.weight`` [out, r(, 1, 1)] and ``<name>.alpha`` (0-dim), and nothing else:
diffusers refuses a kohya file with any leftover key. Module names come from
:mod:`studio.formats.kohya_names`, tensor names from :mod:`studio.formats.keys`; shapes follow the base layer, so a 1x1-conv ``proj_in``
of SD 1.x is 4-D and a Linear one (SD 2.x, SDXL) is 2-D.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save
from torch import nn

from studio.atomic import write_text
from studio.errors import StudioError
from studio.formats.keys import KOHYA, kohya_key, parse_key
from studio.formats.kohya_names import ModuleRef, kohya_module_index, kohya_name
from studio.formats.safetensors_io import load_tensors, save_tensors
from studio.lora.tensors import AdapterTensors, LoraTensors, LycorisTensors
from studio.models.family import ModelFamily

LEGACY_HASH_WINDOW = (0x100000, 0x110000)  # sd-scripts' addnet_hash_legacy: 64 KiB at 1 MiB
SD_VERSION = {ModelFamily.SD1: "SD1", ModelFamily.SD2: "SD2", ModelFamily.SDXL: "SDXL"}  # A1111's names

LoraDict = dict[tuple[str, str], AdapterTensors]  # (component, module path) -> tensors
_PLAIN = ("down", "up", "alpha")  # the only roles of a plain kohya LoRA


def base_layer(components: dict[str, Any], component: str, path: str) -> nn.Module:
    """The base model's layer at ``path``, seen through a peft wrapper if there is one."""
    try:
        module = components[component].get_submodule(path)
    except (KeyError, AttributeError):
        raise StudioError(f"the base model has no layer {component}.{path}") from None
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def layer_shapes(layer: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(down, up)`` shapes of a rank-``rank`` LoRA on ``layer``: up is 1x1 for any conv."""
    if isinstance(layer, nn.Conv2d):
        return (rank, layer.in_channels // layer.groups, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
    if isinstance(layer, nn.Linear):
        return (rank, layer.in_features), (layer.out_features, rank)
    raise StudioError(f"a LoRA cannot adapt a {type(layer).__name__} layer")


def fit(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """``tensor`` in ``shape``: a 2-D LoRA factor on a 1x1 conv is the same numbers, reshaped."""
    if tuple(tensor.shape) == shape:
        return tensor
    if tensor.numel() == torch.Size(shape).numel() and tensor.shape[:2] == torch.Size(shape[:2]):
        return tensor.reshape(shape)
    raise StudioError(
        f"{what} has shape {tuple(tensor.shape)} but the base layer needs {shape} (wrong base model?)"
    )


def to_kohya_state_dict(
    lora: LoraDict, components: dict[str, Any], family: ModelFamily, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """The kohya / LyCORIS tensors of an adapter. Alpha stays fp32, so a value like 0.1 is stored exactly.

    Alphas are written as given. Mixed ranks load everywhere, but diffusers (0.42.1) applies
    only the most common alpha to a kohya file's attention and text-encoder layers, so a file
    meant for diffusers should keep one alpha for all layers.
    """
    allowed = ("unet", *family.text_encoder_names)
    unet_config = components["unet"].config
    state: dict[str, torch.Tensor] = {}
    for (component, path), tensors in sorted(lora.items()):
        if component not in allowed:
            raise StudioError(f"a {family.value} LoRA has no component {component!r} (layer {path})")
        layer = base_layer(components, component, path)
        try:
            name = kohya_name(ModuleRef(component, path, layer), family, unet_config)
        except ValueError as exc:
            raise StudioError(f"layer {component}.{path} has no kohya name: {exc}") from None
        if kohya_key(name, "alpha") in state:
            raise StudioError(f"two layers map to the same kohya name {name}")
        where = f"{component}.{path}"
        roles, alpha = (
            _lora_roles(tensors, layer, where)
            if isinstance(tensors, LoraTensors)
            else _lycoris_roles(tensors, layer, where)
        )
        state.update({kohya_key(name, role): value.to(dtype) for role, value in roles.items()})
        state[kohya_key(name, "alpha")] = torch.tensor(float(alpha), dtype=torch.float32)
    return state


def _lora_roles(tensors: LoraTensors, layer: nn.Module, where: str) -> tuple[dict[str, torch.Tensor], float]:
    """down / up in the layer's shapes; DoRA's magnitude as LyCORIS' ``dora_scale`` (``wd_on_out``:
    one value per output channel, ``[out, 1]`` or ``[out, 1, 1, 1]``, as peft's magnitude is)."""
    down_shape, up_shape = layer_shapes(layer, tensors.rank)
    roles = {
        "down": fit(tensors.down, down_shape, f"{where} down"),
        "up": fit(tensors.up, up_shape, f"{where} up"),
    }
    if tensors.magnitude is not None:
        out = up_shape[0]
        if tensors.magnitude.numel() != out:
            raise StudioError(
                f"{where} DoRA magnitude has {tensors.magnitude.numel()} values for {out} outputs"
            )
        roles["dora_scale"] = tensors.magnitude.reshape(out, *[1] * (len(down_shape) - 1))
    return roles, tensors.alpha


def _lycoris_roles(
    tensors: LycorisTensors, layer: nn.Module, where: str
) -> tuple[dict[str, torch.Tensor], float]:
    """LoHa / LoKr tensors as they are, with the alpha that gives peft's scale (alpha / r).

    LyCORIS (and ComfyUI, A1111) apply a LoKr whose two factors are both whole matrices at
    scale 1 whatever its alpha, so peft's alpha / r goes into ``lokr_w1`` and alpha is r.
    """
    weight = layer.weight
    want = (weight.shape[0], math.prod(weight.shape[1:]))
    if tensors.flat_shape() != want:
        raise StudioError(
            f"{where} {tensors.kind} tensors give a {list(tensors.flat_shape())} update "
            f"for a {list(weight.shape)} weight (wrong base model?)"
        )
    roles = tensors.roles()
    if tensors.kind == "lokr" and not tensors.factored:
        roles["lokr_w1"] = roles["lokr_w1"] * (tensors.alpha / tensors.rank)
        return roles, float(tensors.rank)
    return roles, tensors.alpha


def from_kohya_state_dict(
    state: dict[str, torch.Tensor], components: dict[str, Any], family: ModelFamily
) -> tuple[LoraDict, list[str]]:
    """``(adapter, unmatched keys)`` of a plain kohya LoRA; layers are looked up on ``components``.

    A module without ``.alpha`` gets alpha = rank (scale 1), as in sd-scripts; alpha 0 too.
    Keys that name no layer of this base, or are not one of the three LoRA tensors, come back
    unmatched rather than failing, so the caller decides how strict to be.
    """
    index = kohya_module_index(components, family)
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # name -> role -> (key, tensor)
    unmatched: list[str] = []
    for key, value in state.items():
        parsed = parse_key(key)
        if parsed and parsed.convention == KOHYA and parsed.module in index and parsed.role in _PLAIN:
            groups.setdefault(parsed.module, {})[parsed.role] = (key, value)
        else:
            unmatched.append(key)
    lora: LoraDict = {}
    for name, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            unmatched.extend(key for key, _ in parts.values())
            continue
        (down_key, down), (up_key, up) = parts["down"], parts["up"]
        alpha = parts["alpha"][1] if "alpha" in parts else None
        rank = down.shape[0] if down.dim() else 0
        if rank == 0 or (alpha is not None and alpha.numel() != 1):
            raise StudioError(f"{name} is not a valid LoRA module (rank 0 or a non-scalar alpha)")
        ref = index[name]
        down_shape, up_shape = layer_shapes(ref.module, rank)
        lora[(ref.component, ref.path)] = LoraTensors(
            down=fit(down.float(), down_shape, down_key),
            up=fit(up.float(), up_shape, up_key),
            alpha=(float(alpha.float().item()) if alpha is not None else 0.0) or float(rank),
        )
    return lora, sorted(unmatched)


def load_kohya(
    path: str | Path, components: dict[str, Any], family: ModelFamily
) -> tuple[LoraDict, list[str], dict[str, str]]:
    """``(adapter, unmatched keys, metadata)`` of a kohya LoRA file, e.g. to resume training from it."""
    tensors, metadata = load_tensors(path)
    try:
        lora, unmatched = from_kohya_state_dict(tensors, components, family)
    except StudioError as exc:
        raise StudioError(exc.message, path=path, hint=exc.hint) from None
    return lora, unmatched, metadata


def file_hashes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` and ``sshs_legacy_hash`` of the file ``state`` + ``metadata`` will be.

    The model hash covers the data section only (A1111's "addnet" hash), which metadata does
    not change. The legacy hash covers file bytes [1 MiB, 1 MiB + 64 KiB): it is taken on a
    serialisation whose hash fields hold same-length placeholders, so the header, and every
    byte offset after it, is that of the final file (a file shorter than 1 MiB hashes the
    empty window, like sd-scripts).
    """
    placeholders = {**metadata, "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8}
    data = save(state, metadata=placeholders)
    (header_len,) = struct.unpack("<Q", data[:8])
    start, end = LEGACY_HASH_WINDOW
    return {
        "sshs_model_hash": hashlib.sha256(memoryview(data)[8 + header_len :]).hexdigest(),
        "sshs_legacy_hash": hashlib.sha256(memoryview(data)[start:end]).hexdigest()[:8],
    }


def a1111_user_metadata(
    metadata: dict[str, str], family: ModelFamily, preferred_weight: float = 1.0, notes: str | None = None
) -> dict[str, Any]:
    """The ``<name>.json`` AUTOMATIC1111 shows and edits on the LoRA card (its own key names)."""
    if notes is None:
        layers = metadata.get("studio.layers") or metadata.get("studio.preset", "?")  # the old key
        notes = (
            f"rank {metadata.get('ss_network_dim', '?')}, alpha {metadata.get('ss_network_alpha', '?')}, "
            f"layers {layers}, {metadata.get('ss_steps', '?')} steps"
        )
    return {
        "description": metadata.get("modelspec.description", ""),
        "sd version": SD_VERSION[family],
        "activation text": metadata.get("modelspec.trigger_phrase", ""),
        "preferred weight": float(preferred_weight),
        "notes": notes,
    }


def save_kohya(
    path: str | Path,
    lora: LoraDict,
    components: dict[str, Any],
    family: ModelFamily,
    metadata: dict[str, str],
    *,
    dtype: torch.dtype = torch.float16,
    preferred_weight: float = 1.0,
    notes: str | None = None,
) -> Path:
    """Write ``path`` (kohya LoRA with hashes in its metadata) and A1111's ``<stem>.json`` beside it.

    Both writes are atomic. An existing sidecar keeps the keys we do not set (A1111's
    "negative text", "pinned"...), so re-exporting does not wipe what the user edited there.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise StudioError("a kohya LoRA file must end in .safetensors", path=path)
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in to_kohya_state_dict(lora, components, family, dtype).items()
    }
    metadata = {**metadata, **file_hashes(state, metadata)}
    save_tensors(path, state, metadata)

    sidecar = path.with_suffix(".json")
    user: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            existing = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            existing = None  # unreadable: replaced by ours
        user = existing if isinstance(existing, dict) else {}
    user.update(a1111_user_metadata(metadata, family, preferred_weight, notes))
    write_text(sidecar, json.dumps(user, indent=4, ensure_ascii=False) + "\n")
    return path
