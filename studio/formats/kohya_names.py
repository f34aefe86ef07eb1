"""Module names in kohya LoRA files, derived from diffusers module paths.

The rules (see shared/reference/kohya-format-and-sd-scripts.md, section 1.2):

* name = prefix + "_" + module path with every "." turned into "_";
* prefixes: ``lora_unet``; ``lora_te`` for the one SD 1.x/2.x text encoder, ``lora_te1`` and
  ``lora_te2`` for SDXL's two;
* SD 1.x/2.x UNet paths are diffusers paths; SDXL UNet paths are the original SGM/LDM ones
  (``input_blocks_4_1_...``), because that is what kohya sd-scripts writes;
* text-encoder paths are ``text_model.encoder.layers.{i}...`` whatever the installed
  transformers calls them (5.x dropped the ``text_model`` level of ``CLIPTextModel``).

This one table serves both directions: export looks names up by module, import by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from studio.formats.keys import UNET_PREFIX
from studio.models.family import ModelFamily

_RESNET_TO_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


@dataclass(frozen=True)
class ModuleRef:
    """One adaptable layer of a base model."""

    component: str  # "unet", "text_encoder" or "text_encoder_2"
    path: str  # diffusers / transformers module path inside that component
    module: nn.Module

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


def text_encoder_prefix(family: ModelFamily, component: str) -> str:
    if family is ModelFamily.SDXL:
        return "lora_te1" if component == "text_encoder" else "lora_te2"
    return "lora_te"


def canonical_text_encoder_path(path: str) -> str:
    """``encoder.layers.0.mlp.fc1`` or ``text_model.encoder...`` -> ``text_model.encoder...``."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def _resnet_inner(rest: str) -> str:
    head, _, tail = rest.partition(".")
    mapped = _RESNET_TO_SGM.get(head, head)
    return f"{mapped}.{tail}" if tail else mapped


def diffusers_to_sgm(path: str, unet_config: Any) -> str:
    """Map a diffusers UNet module path to the SGM/LDM path kohya uses for SDXL.

    Block numbering follows LDM: input block 0 is ``conv_in``; each down block adds
    ``layers_per_block`` resnet(+attention) blocks and then one downsampler block; each
    up block has ``layers_per_block + 1`` blocks, the last of which also holds the
    upsampler (after the attention, when there is one).
    """
    for diffusers_name, sgm_name in _TOP_LEVEL_TO_SGM.items():
        if path == diffusers_name or path.startswith(diffusers_name + "."):
            return sgm_name + path[len(diffusers_name) :]

    lpb = unet_config.layers_per_block
    lpb = lpb if isinstance(lpb, int) else lpb[0]
    up_types = list(unet_config.up_block_types)

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (lpb + 1) + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_resnet_inner(rest)}"
        return f"input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path):
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path):
        kind, layer, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * layer}.{_resnet_inner(rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (lpb + 1) + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_resnet_inner(rest)}"
        return f"output_blocks.{index}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)", path):
        block = int(m[1])
        slot = 2 if "CrossAttn" in up_types[block] else 1
        return f"output_blocks.{block * (lpb + 1) + lpb}.{slot}.conv{m[2]}"
    raise ValueError(f"no SGM name for UNet module {path!r}")


def unet_kohya_name(path: str, family: ModelFamily, unet_config: Any) -> str:
    if family is ModelFamily.SDXL:
        path = diffusers_to_sgm(path, unet_config)
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


def text_encoder_kohya_name(path: str, family: ModelFamily, component: str) -> str:
    return f"{text_encoder_prefix(family, component)}_{canonical_text_encoder_path(path).replace('.', '_')}"


def kohya_name(ref: ModuleRef, family: ModelFamily, unet_config: Any) -> str:
    if ref.component == "unet":
        return unet_kohya_name(ref.path, family, unet_config)
    return text_encoder_kohya_name(ref.path, family, ref.component)


def adaptable_modules(components: dict[str, Any], family: ModelFamily) -> list[ModuleRef]:
    """Every Linear and Conv2d of the denoiser and text encoders (the layers a LoRA can touch).

    A layer peft has wrapped counts once, as its base layer, under its own path; peft's
    sublayers (``base_layer``, ``lora_A.<adapter>``...) are not layers of the base model.
    """
    refs = []
    for component in (family.denoiser, *family.text_encoder_names):
        model = components.get(component)
        if model is None:
            continue
        inside = None  # path prefix of the peft wrapper being walked (named_modules is depth-first)
        for path, module in model.named_modules():
            if inside and path.startswith(inside):
                continue
            if isinstance(module, BaseTunerLayer):
                inside = path + "."
                module = module.get_base_layer()
            if type(module) in (nn.Linear, nn.Conv2d):
                refs.append(ModuleRef(component, path, module))
    return refs


def kohya_module_index(components: dict[str, Any], family: ModelFamily) -> dict[str, ModuleRef]:
    """kohya module name -> layer, for every adaptable layer of a UNet base.

    The flow families' fused modules cover several layers: ``studio.adapters.flow.flow_kohya_index``.
    """
    unet_config = components["unet"].config
    index: dict[str, ModuleRef] = {}
    for ref in adaptable_modules(components, family):
        try:
            name = kohya_name(ref, family, unet_config)
        except ValueError:
            continue  # layers kohya never names (none in SD 1.x/2.x/SDXL UNets today)
        index[name] = ref
    return index
