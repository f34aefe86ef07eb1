"""Which layers a LoRA adapts: the family's patterns for the chosen layer set (preset).

``cross-attn`` (default) adapts only the cross-attention projections, where text meets image
and where a style lives; ``attn`` adds self-attention; ``full`` matches kohya sd-scripts'
default coverage. The patterns themselves belong to each family (``Family.lora_patterns``).
The ResNet convs (``--conv-rank``, LoCon) are found by class, as sd-scripts finds them.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families import PRESETS, Family, get_family

__all__ = ["CONV_BLOCKS", "PRESETS", "all_targets", "conv_block_targets"]


def all_targets(
    components: dict[str, Any], family: Family | str, preset: str, train_text_encoder: bool = True
) -> dict[str, list[str]]:
    """``{component: [module paths]}`` for the denoiser and, unless frozen, every text encoder."""
    return get_family(family).lora_targets(components, preset, train_text_encoder)


# The UNet classes whose convs kohya's LoCon (``conv_dim``) adapts: LoRANetwork's
# UNET_TARGET_REPLACE_MODULE_CONV2D_3X3, compared by class name as sd-scripts does.
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def conv_block_targets(denoiser: torch.nn.Module) -> tuple[list[str], list[str]]:
    """``(every layer, the 3x3 convs among them)`` of the denoiser's ResNet / resampler blocks.

    The 3x3 (any kernel > 1x1) convs take the conv rank; the blocks' Linear (``time_emb_proj``)
    and 1x1 convs (``conv_shortcut``) take the network rank, as in sd-scripts. A denoiser
    without such blocks (a flow transformer) gives two empty lists.
    """
    layers: list[str] = []
    spatial: list[str] = []
    for path, block in denoiser.named_modules():
        if type(block).__name__ not in CONV_BLOCKS:
            continue
        for child, module in block.named_modules():
            if not child or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                continue
            layers.append(f"{path}.{child}")
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
                spatial.append(f"{path}.{child}")
    return layers, spatial
