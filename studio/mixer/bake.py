"""Export the current blend as ONE kohya LoRA file that any tool can load at weight 1.

``exact`` concatenates ranks: for layer ℓ, ``down = [A₁; A₂; …]`` and
``up = [c₁s₁B₁ | c₂s₂B₂ | …]`` (cᵢ the blend coefficient, sᵢ = αᵢ/rᵢ), with alpha = Σrᵢ so
the file's own scale is 1. ``up @ down`` is then exactly Σ cᵢ sᵢ Bᵢ Aᵢ: no cross terms
(unlike sd-scripts' non-concat merge or peft's ``linear``), at rank Σrᵢ. Only plain
(down, up) factors can be concatenated.

``svd`` forms the blended ΔW per layer in fp32 and keeps its top-k singular triplets
(``up = U·S``, ``down = Vᵀ``, alpha = k): any adapter kind, fixed size, and the relative
Frobenius error it costs is reported per layer and overall.

DoRA has no exact bake: its update m ⊙ (W0 + BA)/‖W0 + BA‖ − W0 rescales every row of W0,
so it is full rank in general, and a kohya file holds no magnitude to carry it. An exact
bake refuses it; svd bakes Σ cᵢ·Dᵢ with each Dᵢ taken on the unpatched base (``originals``).

The file is the family's kohya file (``Family.save_kohya_file``): SD3.5 and Flux blends are
written on their original fused layout, the split layers' factors assembled exactly (an svd
module's error is then over all of its parts).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from studio.adapters.adapter import LayerKey
from studio.adapters.layers import DoraDelta, LoraDelta, delta_on
from studio.errors import StudioError
from studio.formats.kohya_names import ModuleRef
from studio.formats.metadata import (
    base_model_version,
    metadata_resolution,
    modelspec_metadata,
    studio_version,
)
from studio.lora.tensors import LoraTensors
from studio.mixer.blend import BlendItem, Terms, blend_terms
from studio.mixer.lbw import layers_per_block
from studio.models.family import ModelFamily, prediction_type


@dataclass(frozen=True)
class BakeReport:
    path: Path
    method: str  # "exact" or "svd"
    layers: int
    rank: str  # "24", or "Dynamic" when layers differ
    layer_errors: dict[str, float] = field(default_factory=dict)  # svd: ‖ΔW - up·down‖ / ‖ΔW‖ per module
    overall_error: float = 0.0  # svd: the same over all layers together

    def summary(self) -> str:
        text = f"{self.path}: {self.layers} layers, rank {self.rank}, {self.method}"
        if self.method == "svd":
            worst = max(self.layer_errors.items(), key=lambda kv: kv[1], default=("-", 0.0))
            text += f"; relative error {self.overall_error:.2e} overall, worst {worst[1]:.2e} ({worst[0]})"
        return text


def _exact_factors(key: LayerKey, terms: Terms, weight_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    downs, ups = [], []
    for adapter, coefficient in terms:
        layer = adapter.layers[key]
        if isinstance(layer, DoraDelta):
            raise StudioError(
                f"adapter {adapter.name!r} is DoRA ({key[0]}:{key[1]}), which has no exact bake: its update "
                "rescales the base weight's rows (or columns), so it is not a low-rank product",
                path=adapter.path,
                hint="bake with a target rank (svd) instead",
            )
        if not (isinstance(layer, LoraDelta) and layer.is_plain):
            raise StudioError(
                f"an exact bake needs plain LoRA factors, but {key[0]}:{key[1]} of adapter "
                f"{adapter.name!r} is {layer.kind}{' with a Tucker mid' if layer.kind == 'lora' else ''}",
                path=adapter.path,
                hint="bake with a target rank (svd) instead",
            )
        downs.append(layer.down.float().reshape(layer.rank, *weight_shape[1:]))
        ups.append(layer.up.float().reshape(weight_shape[0], layer.rank) * (coefficient * layer.scale))
    up = torch.cat(ups, dim=1)
    return torch.cat(downs, dim=0), up.reshape(*up.shape, *[1] * (len(weight_shape) - 2))


def _svd_factors(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float, float]:
    """(down, up, squared residual, squared norm) of the rank-k truncation of ``delta``."""
    shape = delta.shape
    flat = delta.reshape(shape[0], -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(rank, s.numel())
    up, down = u[:, :k] * s[:k], vh[:k]
    residual = float((flat - up @ down).pow(2).sum())
    return (
        down.reshape(k, *shape[1:]),
        up.reshape(shape[0], k, *[1] * (len(shape) - 2)),
        residual,
        float(s.pow(2).sum()),
    )


def _svd_delta(key: LayerKey, terms: Terms, base: Tensor, device: torch.device) -> Tensor:
    """Σ cᵢ·ΔWᵢ of one layer in fp32; DoRA terms are taken on ``base``, the unpatched weight."""
    delta = torch.zeros(base.shape, dtype=torch.float32, device=device)
    for adapter, coefficient in terms:
        layer = adapter.layers[key]
        if isinstance(layer, DoraDelta) and base.device.type == "meta":
            raise StudioError(
                f"adapter {adapter.name!r} is DoRA: its update depends on the base model's weights, "
                "and this base has only their shapes",
                path=adapter.path,
                hint="give the base model (--base)",
            )
        delta.add_(delta_on(layer, base, device), alpha=coefficient)
    return delta


def _resolution(items: Sequence[BlendItem]) -> tuple[int, int] | None:
    """The size the sources were trained at, from their metadata: the one most of them state
    (the first listed on a tie); None when none does."""
    stated = [r for it in items if (r := metadata_resolution(it.adapter.info.metadata))]
    return Counter(stated).most_common(1)[0][0] if stated else None


def _metadata(items: Sequence[BlendItem], family: ModelFamily, prediction: str, title: str) -> dict:
    sources = [
        {
            "name": it.adapter.name,
            "file": it.adapter.path.name,  # a name, not a local path: the file may be shared
            "sha256": it.adapter.sha256,
            **(
                {"resolution": "{}x{}".format(*size)}
                if (size := metadata_resolution(it.adapter.info.metadata))
                else {}
            ),
            **it.weights.to_dict(),
        }
        for it in items
    ]
    resolution = _resolution(items)
    triggers = [it.adapter.info.trigger for it in items if it.weights.enabled and it.adapter.info.trigger]
    return {
        "ss_network_module": "networks.lora",
        "ss_network_args": "{}",  # plain LoRA, no conv_dim etc.: part of kohya's minimum key set
        "ss_base_model_version": base_model_version(family, prediction),
        "ss_v2": str(family is ModelFamily.SD2),
        **modelspec_metadata(
            family,
            prediction,
            title=title,
            resolution=resolution,
            trigger=", ".join(dict.fromkeys(triggers)),
        ),
        **(
            {"ss_resolution": str(resolution)} if resolution else {}
        ),  # kohya's "(w, h)", as sd-scripts writes it
        "studio.version": studio_version(),
        "studio.bake_sources": json.dumps(sources),
    }


def bake_blend(
    items: Sequence[BlendItem],
    components: dict[str, Any],
    family: ModelFamily,
    out: str | Path,
    *,
    rank: int | None = None,
    dtype: torch.dtype = torch.float32,
    title: str | None = None,
    prediction: str = "epsilon",
    originals: Callable[[LayerKey], Tensor] | None = None,
) -> BakeReport:
    """Write the blend of ``items`` to ``out``; ``rank=None`` -> exact, else svd at that rank.

    ``prediction`` is used only when ``components`` has no scheduler to say it (a shape-only base).
    ``originals`` gives a layer's unpatched weight where a blend engine has patched ``components``
    (``BlendEngine.original_weight``); DoRA terms need it. Default: the weights as they are.
    """
    out = Path(out)
    if rank is not None and rank < 1:
        raise StudioError(f"bake rank must be at least 1, got {rank}")
    wanted = blend_terms(items, layers_per_block(components))
    if not wanted:
        raise StudioError("nothing to bake: every adapter is disabled or at weight 0")
    denoiser_config = components[family.denoiser].config
    lora: dict[LayerKey, LoraTensors] = {}
    module_error: dict[str, tuple[float, float]] = {}  # kohya module -> (squared residual, squared norm)
    residual_total = norm_total = 0.0
    for key, terms in sorted(wanted.items()):
        component, path = key
        weight = components[component].get_submodule(path).weight
        shape = tuple(weight.shape)
        # A shape-only base (meta device, ``studio merge`` without --base) has no memory to compute on.
        device = torch.device("cpu") if weight.device.type == "meta" else weight.device
        if rank is None:
            down, up = _exact_factors(key, terms, shape)
        else:
            base = weight.detach() if originals is None else originals(key)
            delta = _svd_delta(key, terms, base, device)
            down, up, residual, norm = _svd_factors(delta, rank)
            name = family.kohya_name(ModuleRef(component, path, None), denoiser_config)
            before = module_error.get(name, (0.0, 0.0))
            module_error[name] = (before[0] + residual, before[1] + norm)
            residual_total, norm_total = residual_total + residual, norm_total + norm
        lora[key] = LoraTensors(down=down.cpu(), up=up.cpu(), alpha=float(down.shape[0]))

    errors = {name: math.sqrt(r / n) if n > 0 else 0.0 for name, (r, n) in module_error.items()}
    ranks = {tensors.rank for tensors in lora.values()}
    rank_text = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    overall = math.sqrt(residual_total / norm_total) if norm_total > 0 else 0.0
    method = "exact" if rank is None else "svd"
    scheduler = components.get("scheduler")
    if scheduler is not None:
        prediction = prediction_type(scheduler.config)
    metadata = {
        **_metadata(items, family, prediction, title or out.stem),
        "ss_network_dim": rank_text,
        "ss_network_alpha": rank_text,
        "ss_output_name": out.stem,
        "studio.bake_method": method,
    }
    if method == "svd":
        metadata["studio.bake_relative_error"] = f"{overall:.6g}"
    family.save_kohya_file(out, lora, components, metadata, dtype=dtype)
    return BakeReport(out, method, len(lora), rank_text, errors, overall)
