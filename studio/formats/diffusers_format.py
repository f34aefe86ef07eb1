"""diffusers/peft LoRA files: what ``pipe.save_lora_weights`` writes and ``pipe.load_lora_weights`` reads.

Keys are ``<component>.<module path>.lora_A.weight`` / ``.lora_B.weight``. peft files carry
no per-module alpha, so alpha (and any per-module rank or alpha) travels as peft
``LoraConfig`` arguments in the ``lora_adapter_metadata`` entry, prefixed per component,
exactly as diffusers' ``_save_lora_weights`` packs it; without it diffusers would load the
adapter at scale 1 (alpha = rank).

Text-encoder keys use the long-standing ``text_model.encoder...`` spelling, which diffusers
also accepts for transformers >= 5.6's flattened ``CLIPTextModel``; target module names in
the config leave ``text_model.`` out so they match either layout.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

from studio.errors import StudioError
from studio.formats.keys import peft_key
from studio.formats.kohya import LoraDict, base_layer, fit, layer_shapes
from studio.formats.kohya_names import canonical_text_encoder_path
from studio.formats.safetensors_io import save_tensors
from studio.lora.tensors import LoraTensors
from studio.models.family import ModelFamily


def _key_path(component: str, path: str) -> str:
    return canonical_text_encoder_path(path) if component.startswith("text_encoder") else path


def _target_name(component: str, path: str) -> str:
    return path.removeprefix("text_model.") if component.startswith("text_encoder") else path


def to_diffusers_state_dict(
    lora: LoraDict, components: dict[str, Any], family: ModelFamily, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """The peft-style tensors of an adapter, keyed by pipeline component."""
    allowed = (family.denoiser, *family.text_encoder_names)
    state: dict[str, torch.Tensor] = {}
    for (component, path), tensors in sorted(lora.items()):
        if component not in allowed:
            raise StudioError(f"a {family.value} LoRA has no component {component!r} (layer {path})")
        if not isinstance(tensors, LoraTensors) or tensors.magnitude is not None:
            kind = "DoRA" if isinstance(tensors, LoraTensors) else tensors.kind
            raise StudioError(f"a diffusers/peft LoRA file cannot hold a {kind} layer ({component}.{path})")
        down_shape, up_shape = layer_shapes(base_layer(components, component, path), tensors.rank)
        down = fit(tensors.down, down_shape, f"{component}.{path} down")
        up = fit(tensors.up, up_shape, f"{component}.{path} up")
        key_path = _key_path(component, path)
        state[peft_key(component, key_path, "down")] = down.to(dtype)
        state[peft_key(component, key_path, "up")] = up.to(dtype)
    return state


def _most_common(values: dict[str, Any]) -> Any:
    return collections.Counter(values.values()).most_common(1)[0][0]


def adapter_config(lora: LoraDict) -> dict[str, Any]:
    """peft ``LoraConfig`` arguments per component, packed as ``<component>.<argument>``.

    The most common rank and alpha become ``r``/``lora_alpha``; other modules go into
    ``rank_pattern``/``alpha_pattern`` (as diffusers' own ``get_peft_kwargs`` does).
    """
    packed: dict[str, Any] = {}
    for component in sorted({component for component, _ in lora}):
        ranks = {_target_name(c, p): t.rank for (c, p), t in lora.items() if c == component}
        alphas = {_target_name(c, p): float(t.alpha) for (c, p), t in lora.items() if c == component}
        r, alpha = _most_common(ranks), _most_common(alphas)
        config = {
            "r": r,
            "lora_alpha": alpha,
            "target_modules": sorted(ranks),
            "rank_pattern": {name: rank for name, rank in ranks.items() if rank != r},
            "alpha_pattern": {name: value for name, value in alphas.items() if value != alpha},
        }
        packed.update({f"{component}.{key}": value for key, value in config.items()})
    return packed


def save_diffusers_lora(
    path: str | Path,
    lora: LoraDict,
    components: dict[str, Any],
    family: ModelFamily,
    metadata: dict[str, str],
    *,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``path`` atomically: a single-file diffusers LoRA, ``metadata`` kept alongside the config."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise StudioError("a diffusers LoRA file must end in .safetensors", path=path)
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    state = to_diffusers_state_dict(lora, components, family, dtype)
    header = {
        **metadata,
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(adapter_config(lora), indent=2, sort_keys=True),
    }
    save_tensors(path, state, header)
    return path
