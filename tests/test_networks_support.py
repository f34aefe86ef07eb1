"""Helpers shared by the network-type tests (test_networks*.py)."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

NETWORKS = ("lora", "locon", "loha", "lokr")


def peft_layers(components) -> dict[tuple[str, str], BaseTunerLayer]:
    return {
        (name, path): module
        for name, model in components.items()
        if isinstance(model, torch.nn.Module)
        for path, module in model.named_modules()
        if isinstance(module, BaseTunerLayer)
    }


def sd1_kohya_name(component: str, path: str) -> str:
    """kohya's SD 1.x rule: prefix + the module path, dots as underscores (text encoder under text_model)."""
    if component == "unet":
        return "lora_unet_" + path.replace(".", "_")
    return "lora_te_" + ("text_model." + path.removeprefix("text_model.")).replace(".", "_")
