"""The blend: per-adapter sliders, and the per-layer coefficients they add up to.

For layer ℓ the blend's update is ΔW_ℓ = Σᵢ cᵢ,ℓ · ΔWᵢ,ℓ, where ΔWᵢ,ℓ is adapter i's own
update (its alpha/rank scale included) and cᵢ,ℓ = weight × component strength × block
weight × LoRA-Block-Weight ratio (``lbw``, A1111's vectors: see ``studio.mixer.lbw``).
Block weights apply to every UNet layer inside the block (attention, resnets,
up/down-samplers), unlike diffusers' ``set_adapters`` which scales attention only. Blocks are
the adapter's family's (``Family.layer_group``): down / mid / up for a UNet, double / single
for Flux's transformer, double for SD3's joint blocks; the ``unet`` strength is the denoiser's,
UNet or transformer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from studio.adapters.adapter import Adapter, LayerKey
from studio.errors import StudioError
from studio.mixer.lbw import block_index, parse_lbw

_BLOCK_KEY = re.compile(r"^(down|up|double|single)(\.\d+)?$|^mid$")
_UNET_BLOCK = re.compile(r"^(down|up)_blocks\.(\d+)\.|^(mid)_block\.")

Terms = tuple[tuple[Adapter, float], ...]  # (adapter, coefficient) for one layer, in blend order
Grouping = Callable[[str, str], "tuple[str, str | None] | None"]  # Family.layer_group


def unet_block(path: str) -> tuple[str, str | None] | None:
    """``down_blocks.1.resnets.0.conv1`` -> ("down", "down.1"); ``conv_in`` -> None (outside the blocks)."""
    m = _UNET_BLOCK.match(path)
    if m is None:
        return None
    if m[3]:
        return "mid", None
    return m[1], f"{m[1]}.{m[2]}"


@dataclass(frozen=True)
class AdapterWeights:
    """Slider state of one adapter in a blend (JSON-friendly; stored in recipes).

    ``blocks`` scales denoiser groups: ``{"down": 1.0, "mid": 0.5, "up": 0.0}`` (a flow
    transformer: ``{"double": 1.0, "single": 0.5}``); a numbered key (``"up.1"``,
    ``"single.7"``) overrides its group. Layers outside the blocks (``conv_in``, time
    embedding, ``conv_out``) and unlisted groups keep weight 1. ``lbw`` is an A1111 LoRA Block
    Weight preset or vector (text, kept as typed); it multiplies on top of ``blocks``.
    """

    weight: float = 1.0
    unet: float = 1.0
    text_encoder: float = 1.0
    enabled: bool = True
    blocks: Mapping[str, float] = field(default_factory=dict)
    lbw: str = ""
    _lbw_ratios: tuple[float, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for value in (self.weight, self.unet, self.text_encoder, *self.blocks.values()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise StudioError(f"adapter weights must be finite numbers, got {value!r}")
        bad = [key for key in self.blocks if not _BLOCK_KEY.match(key)]
        if bad:
            raise StudioError(
                f"unknown UNet block {bad[0]!r}: use down, mid, up or down.N / up.N "
                "(SD3.5 and Flux transformers: double, single, double.N / single.N)"
            )
        object.__setattr__(self, "blocks", {k: float(v) for k, v in self.blocks.items()})
        object.__setattr__(self, "lbw", str(self.lbw or "").strip())
        object.__setattr__(self, "_lbw_ratios", parse_lbw(self.lbw))

    def coefficient(
        self, component: str, path: str, layers_per_block: int = 2, group: Grouping | None = None
    ) -> float:
        """cᵢ,ℓ for one layer of this adapter (``layers_per_block`` of the UNet numbers LBW's blocks;
        ``group``: the adapter family's ``layer_group``, a UNet's blocks when None)."""
        if not self.enabled:
            return 0.0
        strength = self.text_encoder if component.startswith("text_encoder") else self.unet
        coefficient = self.weight * strength
        block = group(component, path) if group else unet_block(path) if component == "unet" else None
        if self.blocks and block:
            group_name, numbered = block
            coefficient *= self.blocks.get(numbered, self.blocks.get(group_name, 1.0))
        if (
            self._lbw_ratios is not None
            and (index := block_index(component, path, layers_per_block)) is not None
        ):
            coefficient *= self._lbw_ratios[index]
        return coefficient

    def to_dict(self) -> dict:
        return {
            "weight": self.weight,
            "unet": self.unet,
            "text_encoder": self.text_encoder,
            "enabled": self.enabled,
            "blocks": dict(self.blocks),
            **({"lbw": self.lbw} if self.lbw else {}),
        }


@dataclass(frozen=True)
class BlendItem:
    adapter: Adapter
    weights: AdapterWeights = AdapterWeights()


def blend_terms(items: Sequence[BlendItem], layers_per_block: int = 2) -> dict[LayerKey, Terms]:
    """Per layer, the non-zero (adapter, coefficient) terms of the blend."""
    terms: dict[LayerKey, list[tuple[Adapter, float]]] = {}
    for item in items:
        family = item.adapter.family
        if item.weights.lbw and family.denoiser != "unet":
            raise StudioError(
                f"LoRA Block Weight vectors number UNet blocks; {family.display_name} adapter "
                f"{item.adapter.name!r} takes block weights double / single instead"
            )
        for key in item.adapter.layers:
            coefficient = item.weights.coefficient(*key, layers_per_block, family.layer_group)
            if coefficient != 0.0:
                terms.setdefault(key, []).append((item.adapter, coefficient))
    return {key: tuple(value) for key, value in terms.items()}
