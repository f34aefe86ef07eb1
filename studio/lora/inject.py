"""Attach LoRA layers to a base through peft, and read them back out.

peft is the library diffusers' own LoRA stack uses, so an adapter trained here is the
same object diffusers builds when it loads a file: no second LoRA implementation to
keep in sync. Adapters go in through peft's own ``inject_adapter_in_model``, not the
``add_adapter`` of diffusers or transformers: those wrap it in their own peft version
gates, and transformers 5.24 refuses every peft published so far (< 0.22). Initialisation follows kohya: A is Kaiming-uniform, B is zero, so a fresh
adapter leaves the base's outputs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from studio.families import Family
from studio.lora.targets import all_targets
from studio.lora.tensors import LoraTensors

ADAPTER = "default"


def inject_lora(
    components: dict[str, Any],
    family: Family,
    rank: int = 16,
    alpha: float | None = None,
    preset: str = "cross-attn",
    train_text_encoder: bool = True,
) -> dict[str, list[str]]:
    """Add one trainable LoRA adapter; returns ``{component: [adapted module paths]}``.

    ``alpha`` defaults to ``rank`` (scale 1). Every base weight (VAE included) is
    frozen; only LoRA parameters require grad.
    """
    alpha = float(rank if alpha is None else alpha)
    for model in components.values():
        if isinstance(model, torch.nn.Module):
            model.requires_grad_(False)
    targets = all_targets(components, family, preset, train_text_encoder)
    for component, paths in targets.items():
        model = components[component]
        if not paths:
            continue
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=paths, init_lora_weights=True)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return targets


def set_lora_enabled(model: torch.nn.Module, enabled: bool) -> None:
    """Switch every peft adapter layer of ``model`` on or off (off: the bare base runs)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def lora_parameters(components: dict[str, Any]) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable LoRA parameters per component (for optimizer groups with their own lr)."""
    return {
        name: [p for p in model.parameters() if p.requires_grad]
        for name, model in components.items()
        if isinstance(model, torch.nn.Module) and any(p.requires_grad for p in model.parameters())
    }


def extract_lora(components: dict[str, Any], adapter: str = ADAPTER) -> dict[tuple[str, str], LoraTensors]:
    """``{(component, module path): LoraTensors}`` for every peft LoRA layer, as fp32 copies."""
    found: dict[tuple[str, str], LoraTensors] = {}
    for component, model in components.items():
        if not isinstance(model, torch.nn.Module):
            continue
        for path, module in model.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                found[(component, path)] = LoraTensors(
                    down=module.lora_A[adapter].weight.detach().float().cpu().clone(),
                    up=module.lora_B[adapter].weight.detach().float().cpu().clone(),
                    alpha=float(module.lora_alpha[adapter]),
                )
    return found
