"""One adapted layer's trained tensors, free of peft (readers and writers share them).

Every network type is one record with the same protocol: ``kind``, ``alpha``, ``rank`` and
``roles()``, its tensors under their LyCORIS / kohya names. The writers map roles to keys;
nothing downstream branches on peft's classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LoraTensors:
    """LoRA / LoCon: ΔW = (alpha / rank) · up @ down (reshaped for convs).

    ``magnitude`` (DoRA) is peft's ``lora_magnitude_vector``: one norm per output channel, so
    the layer's weight is ``magnitude · (W + ΔW) / ‖W + ΔW‖`` with the norm taken per output row.
    """

    down: torch.Tensor  # [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    alpha: float
    magnitude: torch.Tensor | None = None  # [out] (DoRA only)
    kind: str = "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def roles(self) -> dict[str, torch.Tensor]:
        roles = {"down": self.down, "up": self.up}
        if self.magnitude is not None:
            roles["dora_scale"] = self.magnitude
        return roles


@dataclass(frozen=True)
class LycorisTensors:
    """LoHa (``hada_*``) or LoKr (``lokr_*``) tensors as peft holds them.

    peft's parameter names are LyCORIS's tensor names and its layouts are LyCORIS's
    (``peft/tuners/loha``, ``lokr`` cite the LyCORIS lines they copy), so ``tensors`` is written
    as it is. ``rank`` is peft's ``r``; peft scales every layer by alpha / r.
    """

    kind: str  # "loha" or "lokr"
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: float = 1.0
    rank: int = 1

    def roles(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    @property
    def factored(self) -> bool:
        """True when some factor is a product ``a @ b`` (LyCORIS scales by alpha / rank only then)."""
        return any(name.endswith("_a") for name in self.tensors)

    def flat_shape(self) -> tuple[int, int]:
        """``(out, in · kh · kw)`` of the ΔW these tensors make, from shapes alone (meta tensors too)."""
        t = self.tensors
        if self.kind == "loha":
            first = _product_shape(t["hada_w1_a"], t["hada_w1_b"], t.get("hada_t1"))
            second = _product_shape(t["hada_w2_a"], t["hada_w2_b"], t.get("hada_t2"))
            return first if first == second else (-1, -1)
        w1 = (
            tuple(t["lokr_w1"].shape)
            if "lokr_w1" in t
            else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        )
        if "lokr_w2" in t:
            w2 = (t["lokr_w2"].shape[0], math.prod(t["lokr_w2"].shape[1:]))
        else:
            w2 = _product_shape(t["lokr_w2_a"], t["lokr_w2_b"], t.get("lokr_t2"))
        return w1[0] * w2[0], w1[1] * w2[1]


def _product_shape(a: torch.Tensor, b: torch.Tensor, core: torch.Tensor | None) -> tuple[int, int]:
    """Shape of ``a @ b`` flattened, or of the CP rebuild ``core x a x b`` (a, b: ``[rank, dim]``)."""
    if core is None:
        return a.shape[0], math.prod(b.shape[1:])
    return a.shape[1], b.shape[1] * math.prod(core.shape[2:])


AdapterTensors = LoraTensors | LycorisTensors
