"""The network types a run can train, each one peft config: LoRA, LoCon, LoHa, LoKr (+ DoRA).

``locon`` is LoRA on the chosen layers plus the UNet's ResNet blocks (3x3 convs at the conv
rank, their time-embedding Linear and 1x1 shortcut at the rank), which is what kohya's
``networks.lora`` trains with ``conv_dim``; ``lora`` with a conv rank is the same network.
LoHa and LoKr are peft's ``LoHaConfig`` / ``LoKrConfig``; DoRA is ``LoraConfig(use_dora=True)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from peft import LoHaConfig, LoKrConfig, LoraConfig
from peft.config import PeftConfig

from studio.config import NETWORKS, TrainConfig

LYCORIS = ("loha", "lokr")


@dataclass(frozen=True)
class NetworkSpec:
    """What to attach: the type, its rank and alpha, and the 3x3 convs' rank and alpha (None: no convs)."""

    network: str = "lora"
    rank: int = 16
    alpha: float = 16.0
    conv_rank: int | None = None
    conv_alpha: float | None = None
    dora: bool = False
    lokr_factor: int | None = None  # LyCORIS' factor; None: peft's and LyCORIS' balanced split (-1)

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}")

    @classmethod
    def from_config(cls, config: TrainConfig) -> NetworkSpec:
        return cls(
            network=config.network,
            rank=config.rank,
            alpha=config.effective_alpha,
            conv_rank=config.effective_conv_rank,
            conv_alpha=config.effective_conv_alpha,
            dora=config.dora,
            lokr_factor=config.lokr_factor,
        )

    @property
    def has_convs(self) -> bool:
        return self.conv_rank is not None

    def peft_config(self, targets: list[str], convs: list[str] = ()) -> PeftConfig:
        """One peft config for ``targets``; the paths in ``convs`` (3x3 convs) get the conv rank and alpha."""
        ranks = {re.escape(path): self.conv_rank for path in convs}
        alphas = {re.escape(path): self.conv_alpha for path in convs}
        common: dict[str, Any] = dict(
            r=self.rank, target_modules=list(targets), rank_pattern=ranks, alpha_pattern=alphas
        )
        if self.network == "loha":
            return LoHaConfig(alpha=self.alpha, init_weights=True, **common)
        if self.network == "lokr":
            factor = -1 if self.lokr_factor is None else self.lokr_factor
            return LoKrConfig(alpha=self.alpha, init_weights=True, decompose_factor=factor, **common)
        return LoraConfig(lora_alpha=self.alpha, init_lora_weights=True, use_dora=self.dora, **common)

    def kohya_module(self) -> str:
        """``ss_network_module``: sd-scripts' own LoRA, or LyCORIS' kohya wrapper."""
        return "lycoris.kohya" if self.network in LYCORIS or self.dora else "networks.lora"

    def kohya_args(self) -> dict[str, str]:
        """``ss_network_args`` as the network module takes them (``--network_args`` values are strings)."""
        args: dict[str, str] = {}
        if self.kohya_module() == "lycoris.kohya":
            args["algo"] = (
                self.network if self.network in LYCORIS else ("locon" if self.has_convs else "lora")
            )
        if self.has_convs:
            args["conv_dim"] = str(self.conv_rank)
            args["conv_alpha"] = f"{self.conv_alpha:g}"
        if self.network == "lokr" and self.lokr_factor is not None:
            args["factor"] = str(self.lokr_factor)
        if self.dora:
            args["dora_wd"] = "True"
        return args
