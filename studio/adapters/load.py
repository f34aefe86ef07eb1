"""Read a kohya, LyCORIS, diffusers or peft LoRA file into an ``Adapter`` bound to a base.

Nothing is dropped silently: modules that match no base layer are listed in the report
and raised as an ``AdapterWarning`` (``strict=True`` makes them an error); tensors of
adapter kinds we cannot apply faithfully (IA3, OFT, bias updates ...) refuse the
whole file, because half-applying them would not give the picture other tools give.
A DoRA magnitude (``dora_scale``, ``lora_magnitude_vector``) wraps its module's ΔW recipe
in a ``DoraDelta``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from studio.adapters.adapter import Adapter, LayerKey, LoadReport
from studio.adapters.family import FAMILY_NAMES, declared_family, family_from_shapes
from studio.adapters.info import AdapterWarning, adapter_info, read_sidecar
from studio.adapters.layers import (
    AdapterDelta,
    DoraDelta,
    FullDelta,
    LohaDelta,
    LokrDelta,
    LoraDelta,
    rebuild_tucker,
)
from studio.adapters.resolve import ModuleResolver
from studio.errors import StudioError
from studio.formats.keys import DORA_ROLES, UNSUPPORTED_ROLES, TensorKey, is_kohya_key, parse_key
from studio.formats.safetensors_io import load_tensors
from studio.models.family import ModelFamily

Roles = dict[str, tuple[str, Tensor]]  # role -> (tensor name, tensor)
_KIND_OF_ROLE = {"down": "lora", "up": "lora", "mid": "lora"}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _PeftAlphas:
    """alpha / rsLoRA settings of diffusers and peft files, which carry no ``.alpha`` tensors.

    They come from the ``lora_adapter_metadata`` header (keys ``<component>.lora_alpha``
    for pipeline saves, bare ``lora_alpha`` for model saves) or a peft ``adapter_config.json``
    beside the file. Without any, alpha = rank (scale 1), as diffusers assumes. A config
    with ``use_dora`` says every module of it has a ``lora_magnitude_vector``.
    """

    def __init__(self, path: Path, metadata: dict[str, str], formats: set[str]):
        self.configs: dict[str | None, dict] = {}
        raw = metadata.get("lora_adapter_metadata")
        if raw:
            try:
                flat = json.loads(raw)
            except json.JSONDecodeError:
                raise StudioError("lora_adapter_metadata header is not valid JSON", path=path) from None
            for key, value in flat.items():
                component, dot, field = key.partition(".")
                if dot and component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
                    self.configs.setdefault(component, {})[field] = value
                else:
                    self.configs.setdefault(None, {})[key] = value
        sidecar = path.with_name("adapter_config.json")
        if "peft" in formats and None not in self.configs and sidecar.is_file():
            try:
                self.configs[None] = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StudioError(f"unreadable peft config ({exc})", path=sidecar) from None

    def uses_dora(self, component: str) -> bool:
        config = self.configs.get(component) or self.configs.get(None) or {}
        return bool(config.get("use_dora"))

    def scale(self, component: str, path: str, rank: int) -> float:
        config = self.configs.get(component) or self.configs.get(None)
        if not config:
            return 1.0
        alpha = config.get("lora_alpha", rank)
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", path):
                alpha = value
                break
        return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _check_values(path: Path, tensors: dict[str, Tensor]) -> None:
    """Refuse integer and non-finite tensors: patched in, one NaN turns every image black."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise StudioError(f"tensor {key!r} has dtype {tensor.dtype}, not a float type", path=path)
        if not torch.isfinite(tensor).all():
            raise StudioError(
                f"tensor {key!r} holds NaN or infinite values",
                path=path,
                hint="the adapter is damaged (often a diverged training run); re-export or re-download it",
            )


def _parse(tensors: dict[str, Tensor]) -> tuple[dict[str, Roles], dict[str, TensorKey], list[str], set[str]]:
    """Group tensors by module; return (groups, first parsed key per module, foreign keys, formats)."""
    groups: dict[str, Roles] = defaultdict(dict)
    parsed_by_module: dict[str, TensorKey] = {}
    foreign: list[str] = []
    formats: set[str] = set()
    for key, tensor in tensors.items():
        parsed = parse_key(key)
        if parsed is None:
            if is_kohya_key(key):
                raise StudioError(f"unrecognised tensor {key!r}: not a LoRA/LoCon/LoHa/LoKr/full tensor")
            foreign.append(key)
            continue
        formats.add(parsed.convention)
        if not parsed.supported:
            raise StudioError(f"{UNSUPPORTED_ROLES[parsed.role]} (tensor {key!r})")
        module = parsed.label
        if parsed.role in groups[module]:
            raise StudioError(f"two tensors give {parsed.role!r} for module {module!r}")
        groups[module][parsed.role] = (key, tensor)
        parsed_by_module.setdefault(module, parsed)
    return dict(groups), parsed_by_module, foreign, formats


def _alpha(module: str, roles: Roles) -> float | None:
    if "alpha" not in roles:
        return None
    key, tensor = roles["alpha"]
    if tensor.numel() != 1:
        raise StudioError(f"{key!r} should be a scalar, got shape {list(tensor.shape)}")
    return float(tensor.float().item())


def _need(module: str, roles: Roles, *names: str) -> list[Tensor]:
    missing = [n for n in names if n not in roles]
    if missing:
        raise StudioError(f"module {module!r} is incomplete: it has {sorted(roles)} but lacks {missing}")
    return [roles[n][1] for n in names]


def _lokr_factor(module: str, roles: Roles, which: str) -> tuple[Tensor, int | None]:
    """``lokr_w{1,2}`` whole, as ``a @ b``, or (w2 only) as a CP core; returns (matrix, factored rank)."""
    if f"lokr_{which}" in roles:
        return roles[f"lokr_{which}"][1].float(), None
    a, b = _need(module, roles, f"lokr_{which}_a", f"lokr_{which}_b")
    if which == "w2" and "lokr_t2" in roles:
        return rebuild_tucker(roles["lokr_t2"][1].float(), a.float(), b.float()), b.shape[0]
    return a.float() @ b.float().flatten(1), b.shape[0]


def _build_layer(module: str, roles: Roles, peft_scale) -> AdapterDelta:
    """One module's tensors -> its ΔW recipe; ``peft_scale(rank)`` covers files without alpha tensors."""
    magnitudes = [role for role in DORA_ROLES if role in roles]
    if len(magnitudes) > 1:
        raise StudioError(f"module {module!r} has both DoRA magnitudes {magnitudes}")
    if magnitudes:
        role = magnitudes[0]
        if not set(roles) - {role, "alpha"}:
            raise StudioError(f"module {module!r} has a DoRA magnitude ({role}) but no update to decompose")
        inner = _build_layer(module, {k: v for k, v in roles.items() if k != role}, peft_scale)
        return DoraDelta(inner=inner, magnitude=roles[role][1], peft=role == "lora_magnitude_vector")
    alpha = _alpha(module, roles)
    kinds = {_KIND_OF_ROLE.get(role, role.split("_")[0]) for role in roles if role != "alpha"}
    if len(kinds) != 1:
        raise StudioError(f"module {module!r} mixes tensor kinds {sorted(roles)}")
    kind = kinds.pop()
    if kind == "lora":
        down, up = _need(module, roles, "down", "up")
        rank = down.shape[0]
        # No alpha tensor: diffusers/peft config (or 1). kohya's alpha 0 also means "alpha = rank".
        scale = peft_scale(rank) if alpha is None else alpha / rank if alpha else 1.0
        return LoraDelta(down=down, up=up, scale=scale, mid=roles["mid"][1] if "mid" in roles else None)
    if kind == "hada":
        w1a, w1b, w2a, w2b = _need(module, roles, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        t1, t2 = (roles[t][1] if t in roles else None for t in ("hada_t1", "hada_t2"))
        if (t1 is None) != (t2 is None):
            raise StudioError(f"module {module!r} has only one of hada_t1/hada_t2")
        scale = alpha / w1b.shape[0] if alpha else 1.0
        return LohaDelta(w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b, scale=scale, t1=t1, t2=t2)
    if kind == "lokr":
        w1, rank1 = _lokr_factor(module, roles, "w1")
        w2, rank2 = _lokr_factor(module, roles, "w2")
        rank = rank1 or rank2
        scale = alpha / rank if alpha and rank else 1.0
        return LokrDelta(w1=w1, w2=w2, scale=scale, factored_rank=rank)
    return FullDelta(diff=_need(module, roles, "diff")[0])


def _shape_mismatch(
    module: str, roles: Roles, error: str, tensors: dict[str, Tensor], family: ModelFamily, path: Path
):
    shapes = ", ".join(f"{key} {list(tensor.shape)}" for key, tensor in roles.values())
    guess = family_from_shapes(tensors)
    hint = f"its shapes look like an {FAMILY_NAMES[guess]} adapter" if guess and guess is not family else None
    return StudioError(f"shape mismatch for {module!r}: it {error} ({shapes})", path=path, hint=hint)


def _resolve(
    path: Path,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    components: dict[str, Any],
    family: ModelFamily,
) -> tuple[dict[LayerKey, AdapterDelta], list[str], list[str], set[str]]:
    """(layers, unmatched modules, their tensor names, formats seen) of one file on one base."""
    try:
        groups, parsed, foreign, formats = _parse(tensors)
        alphas = _PeftAlphas(path, metadata, formats)
    except StudioError as exc:
        raise StudioError(exc.message, path=exc.path or path, hint=exc.hint) from None
    resolver = ModuleResolver(components, family)
    layers: dict[LayerKey, AdapterDelta] = {}
    unmatched: list[str] = []
    unmatched_keys: list[str] = []
    for module, roles in groups.items():
        fused = resolver.fused(parsed[module])  # a flow base's kohya module: maybe several layers
        ref = fused.refs[0] if fused else resolver.ref(parsed[module])
        if ref is None:
            unmatched.append(module)
            unmatched_keys.extend(key for key, _ in roles.values())
            continue
        try:
            layer = _build_layer(module, roles, lambda rank, r=ref: alphas.scale(r.component, r.path, rank))
        except StudioError as exc:
            raise StudioError(exc.message, path=path) from None
        if error := layer.shape_error(fused.shape if fused else tuple(ref.module.weight.shape)):
            raise _shape_mismatch(module, roles, error, tensors, family, path)
        if alphas.uses_dora(ref.component) and not isinstance(layer, DoraDelta):
            raise StudioError(
                f"the peft config says use_dora, but module {module!r} has no lora_magnitude_vector",
                path=path,
                hint="the file is incomplete: re-save the adapter with peft's save_pretrained",
            )
        try:
            pieces = fused.split(layer) if fused else [(ref, layer)]
        except StudioError as exc:
            raise StudioError(exc.message, path=path, hint=exc.hint) from None
        for target, piece in pieces:
            key = (target.component, target.path)
            if key in layers:
                raise StudioError(
                    f"two modules of the file target the same layer {key[0]}:{key[1]}", path=path
                )
            layers[key] = piece
    return layers, unmatched + foreign, unmatched_keys + foreign, formats


def load_adapter(
    path: str | Path,
    components: dict[str, Any],
    family: ModelFamily,
    *,
    name: str | None = None,
    strict: bool = False,
) -> Adapter:
    """Load ``path`` against a base given as pipeline components (``pipe.components``).

    Raises ``StudioError`` for pickles, family mismatches, shape mismatches and unsupported
    adapter kinds; unmatched modules warn (``AdapterWarning``), or raise when ``strict``.
    """
    path = Path(path)
    tensors, metadata = load_tensors(path)
    if not tensors:
        raise StudioError("the file holds no tensors", path=path)
    _check_values(path, tensors)
    declared, how = declared_family(tensors, metadata)
    if declared is not None and declared is not family:
        raise StudioError(
            f"this adapter was made for {FAMILY_NAMES[declared]} ({how} say so) "
            f"but the base model is {FAMILY_NAMES[family]}",
            path=path,
            hint="pick a base of the adapter's family",
        )
    if note := family.adapter_mismatch(metadata, components):
        warnings.warn(f"{path}: {note}", AdapterWarning, stacklevel=2)
    layers, unmatched, unmatched_keys, formats = _resolve(path, tensors, metadata, components, family)
    if not layers:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise StudioError(
            f"none of its {len(unmatched)} modules match a layer of this {FAMILY_NAMES[family]} base ({shown})",
            path=path,
            hint="is it an adapter for another model family or architecture?",
        )
    if unmatched:
        message = (
            f"{len(unmatched)} modules match no layer of the base and are NOT applied: {', '.join(unmatched)}"
        )
        if strict:
            raise StudioError(message, path=path)
        warnings.warn(f"{path}: {message}", AdapterWarning, stacklevel=2)

    report = LoadReport(
        path=str(path),
        formats=tuple(sorted(formats)),
        applied=len(layers),
        kinds=dict(Counter(layer.kind for layer in layers.values())),
        unmatched=tuple(unmatched),
        unmatched_keys=tuple(unmatched_keys),
    )
    ranks = [layer.rank for layer in layers.values() if layer.rank]
    return Adapter(
        name=name or path.stem,
        path=path,
        sha256=file_sha256(path),
        family=family,
        layers=layers,
        info=adapter_info(path, metadata, read_sidecar(path), ranks),
        report=report,
    )
