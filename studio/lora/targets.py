"""Which layers a LoRA adapts: the family's patterns for the chosen layer set (preset).

``cross-attn`` (default) adapts only the cross-attention projections, where text meets image
and where a style lives; ``attn`` adds self-attention; ``full`` matches kohya sd-scripts'
default coverage. The patterns themselves belong to each family (``Family.lora_patterns``).
"""

from __future__ import annotations

from typing import Any

from studio.families import PRESETS, Family, get_family

__all__ = ["PRESETS", "all_targets"]


def all_targets(
    components: dict[str, Any], family: Family | str, preset: str, train_text_encoder: bool = True
) -> dict[str, list[str]]:
    """``{component: [module paths]}`` for the denoiser and, unless frozen, every text encoder."""
    return get_family(family).lora_targets(components, preset, train_text_encoder)
