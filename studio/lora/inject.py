"""Attach a LoRA / LoCon / LoHa / LoKr adapter to a base through peft, and read it back out.

peft is the library diffusers' own LoRA stack uses, so an adapter trained here is the
same object diffusers builds when it loads a file: no second LoRA implementation to
keep in sync. Adapters go in through peft's own ``inject_adapter_in_model``, not the
``add_adapter`` of diffusers or transformers: those wrap it in their own peft version
gates, and transformers 5.24 refuses every peft published so far (< 0.22). Initialisation
follows kohya and LyCORIS: one factor of each product is zero, so a fresh adapter leaves the
base's outputs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lycoris_utils import LycorisLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from studio.errors import StudioError
from studio.families import Family, get_family
from studio.lora.networks import NetworkSpec
from studio.lora.targets import all_targets, conv_block_targets
from studio.lora.tensors import AdapterTensors, LoraTensors, LycorisTensors

ADAPTER = "default"
_LYCORIS_KIND = {"hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr"}


def inject_lora(
    components: dict[str, Any],
    family: Family,
    rank: int = 16,
    alpha: float | None = None,
    preset: str = "cross-attn",
    train_text_encoder: bool = True,
) -> dict[str, list[str]]:
    """A plain LoRA (``alpha`` defaults to ``rank``, scale 1); see :func:`inject_network`."""
    spec = NetworkSpec(rank=rank, alpha=float(rank if alpha is None else alpha))
    return inject_network(components, family, spec, preset, train_text_encoder)


def inject_network(
    components: dict[str, Any],
    family: Family,
    spec: NetworkSpec,
    preset: str = "cross-attn",
    train_text_encoder: bool = True,
) -> dict[str, list[str]]:
    """Add one trainable adapter of ``spec``'s type; returns ``{component: [adapted module paths]}``.

    Every base weight (VAE included) is frozen; only adapter parameters require grad. With a
    conv rank the denoiser's ResNet blocks join the layer set (kohya's ``conv_dim``).
    """
    for model in components.values():
        if isinstance(model, torch.nn.Module):
            model.requires_grad_(False)
    family = get_family(family)
    targets = all_targets(components, family, preset, train_text_encoder)
    convs: list[str] = []
    if spec.has_convs:
        denoiser = family.denoiser
        blocks, convs = conv_block_targets(components[denoiser])
        if not convs:
            raise StudioError(
                f"--conv-rank / --network locon: the {family.display_name} {denoiser} has no ResNet convolutions",
                hint="leave --conv-rank out and use --network lora, loha or lokr",
            )
        targets = {**targets, denoiser: [*targets.get(denoiser, []), *blocks]}
    for component, paths in targets.items():
        if paths:
            config = spec.peft_config(paths, [p for p in convs if component == family.denoiser])
            inject_adapter_in_model(config, components[component], adapter_name=ADAPTER)
    return targets


def set_lora_enabled(model: torch.nn.Module, enabled: bool) -> None:
    """Switch every peft adapter layer of ``model`` on or off (off: the bare base runs)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def set_input_casts(model: torch.nn.Module, enabled: bool) -> None:
    """Whether ``model``'s adapter layers cast their input to the adapter's dtype (peft's default).

    Under autocast that cast is two wasted copies of every adapted layer's input, each way: peft
    turns a bf16 input into fp32 for the fp32 adapter, and autocast turns it back into bf16 for
    the product. Off, the same bf16 product runs on the input as it is. Off is only right under
    autocast: without it a bf16 input meets fp32 adapter weights.
    """
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = enabled


def lora_parameters(components: dict[str, Any]) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable adapter parameters per component (for optimizer groups with their own lr)."""
    return {
        name: [p for p in model.parameters() if p.requires_grad]
        for name, model in components.items()
        if isinstance(model, torch.nn.Module) and any(p.requires_grad for p in model.parameters())
    }


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """An fp32 CPU copy; a meta tensor (full-size shape checks) stays a meta tensor."""
    tensor = tensor.detach().float()
    return tensor if tensor.is_meta else tensor.cpu().clone()


def layer_tensors(module: BaseTunerLayer, adapter: str = ADAPTER) -> AdapterTensors | None:
    """One peft layer's adapter as fp32 copies, whatever its type; None if it lacks ``adapter``."""
    if isinstance(module, LoraLayer):
        if adapter not in module.lora_A:
            return None
        magnitude = None
        if module.use_dora.get(adapter):
            magnitude = _copy(module.lora_magnitude_vector[adapter].weight).flatten()
        return LoraTensors(
            down=_copy(module.lora_A[adapter].weight),
            up=_copy(module.lora_B[adapter].weight),
            alpha=float(module.lora_alpha[adapter]),
            magnitude=magnitude,
        )
    if isinstance(module, LycorisLayer):
        tensors = {
            name: _copy(getattr(module, name)[adapter])
            for name in module.adapter_layer_names
            if adapter in getattr(module, name)
        }
        if not tensors:
            return None
        kind = next(_LYCORIS_KIND[name] for name in tensors if name in _LYCORIS_KIND)
        return LycorisTensors(kind, tensors, float(module.alpha[adapter]), int(module.r[adapter]))
    return None


def extract_lora(components: dict[str, Any], adapter: str = ADAPTER) -> dict[tuple[str, str], AdapterTensors]:
    """``{(component, module path): tensors}`` for every peft adapter layer, as fp32 copies."""
    found: dict[tuple[str, str], AdapterTensors] = {}
    for component, model in components.items():
        if not isinstance(model, torch.nn.Module):
            continue
        for path, module in model.named_modules():
            if isinstance(module, BaseTunerLayer) and (tensors := layer_tensors(module, adapter)):
                found[(component, path)] = tensors
    return found
