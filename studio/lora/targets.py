"""Which layers a LoRA adapts: the UNet presets and the text-encoder targets.

``cross-attn`` (default) adapts only the cross-attention projections, which is where
text meets image and where a style lives; ``full`` matches kohya sd-scripts' default
coverage (every Linear and 1x1 conv inside the transformer blocks) so module counts
equal sd-scripts' "create LoRA for ..." lines: SD 1.5 192 + 72, SDXL 722 + 264.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from studio.models.family import ModelFamily

PRESETS = ("cross-attn", "attn", "full")

_ATTN_PROJ = r"(to_q|to_k|to_v|to_out\.0)"
_UNET_PATTERNS = {
    "cross-attn": rf"\.transformer_blocks\.\d+\.attn2\.{_ATTN_PROJ}$",
    "attn": rf"\.transformer_blocks\.\d+\.attn[12]\.{_ATTN_PROJ}$",
    "full": rf"(\.transformer_blocks\.\d+\.(attn[12]\.{_ATTN_PROJ}|ff\.net\.0\.proj|ff\.net\.2)"
    r"|\.attentions\.\d+\.(proj_in|proj_out))$",
}
_TE_PATTERNS = {
    "cross-attn": r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
    "attn": r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
    "full": r"\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$",
}


def _check(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def _matching(model: nn.Module, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and regex.search("." + name)
    ]


def unet_targets(unet: nn.Module, preset: str = "cross-attn") -> list[str]:
    """Full module paths of the UNet layers the preset adapts."""
    _check(preset)
    return _matching(unet, _UNET_PATTERNS[preset])


def text_encoder_targets(text_encoder: nn.Module, preset: str = "cross-attn") -> list[str]:
    """Full module paths of the text-encoder layers the preset adapts (q/k/v/out, + MLP in full)."""
    _check(preset)
    return _matching(text_encoder, _TE_PATTERNS[preset])


def all_targets(
    components: dict[str, Any], family: ModelFamily, preset: str, train_text_encoder: bool = True
):
    """``{component: [module paths]}`` for the UNet and, unless frozen, every text encoder."""
    targets = {"unet": unet_targets(components["unet"], preset)}
    if train_text_encoder:
        for name in family.text_encoder_names:
            targets[name] = text_encoder_targets(components[name], preset)
    return targets
