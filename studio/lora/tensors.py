"""One adapted layer's LoRA factors as plain tensors, free of peft (readers and writers share it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoraTensors:
    """One adapted layer: ΔW = (alpha / rank) · up @ down (reshaped for convs)."""

    down: torch.Tensor  # [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]
