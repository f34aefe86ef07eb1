"""Write a diffusers pipeline as an ORIGINAL-format single-file checkpoint (test utility).

The layout is the one real ``v1-5-pruned-emaonly.safetensors``, SD 2.x and
``sd_xl_base_1.0.safetensors`` files have, i.e. the inverse of diffusers' own converters in
``diffusers/loaders/single_file_utils.py`` (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``):

* UNet under ``model.diffusion_model.`` with LDM/SGM names (``input_blocks.4.1...``);
* VAE under ``first_stage_model.`` (``encoder.down.{i}.block.{j}``, ``mid.attn_1.q`` as a 1x1 conv,
  decoder ``up.{n-1-i}``: LDM counts decoder blocks from the lowest resolution up);
* SD 1.x text encoder under ``cond_stage_model.transformer.text_model.`` (HF CLIP names);
* SD 2.x text encoder under ``cond_stage_model.model.`` (OpenCLIP names);
* SDXL: ``conditioner.embedders.0.transformer.text_model.`` (HF CLIP) and
  ``conditioner.embedders.1.model.`` (OpenCLIP, with ``text_projection`` transposed).

Also written, as in real files, are tensors diffusers must ignore: the CLIP ``position_ids``
buffer, OpenCLIP ``logit_scale`` and the LDM scheduler buffers (``alphas_cumprod``...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from studio.formats.kohya_names import diffusers_to_sgm
from studio.models.family import ModelFamily, detect_family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer.text_model."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."


def _split(name: str) -> tuple[str, str]:
    module, _, suffix = name.rpartition(".")
    return module, suffix


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --- UNet -------------------------------------------------------------------------------------


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel -> ``model.diffusion_model.*`` (module path via diffusers_to_sgm)."""
    out = {}
    for name, tensor in _state_dict(unet).items():
        module, suffix = _split(name)
        out[f"{UNET_PREFIX}{diffusers_to_sgm(module, unet.config)}.{suffix}"] = tensor
    return out


# --- VAE --------------------------------------------------------------------------------------

_VAE_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}


def _vae_module_to_ldm(module: str, num_up_blocks: int) -> str:
    if module in ("quant_conv", "post_quant_conv"):
        return module
    side, _, rest = module.partition(".")  # "encoder" / "decoder"
    if rest in _VAE_TOP:
        return f"{side}.{_VAE_TOP[rest]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", rest):
        return f"{side}.down.{m[1]}.block.{m[2]}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", rest):
        return f"{side}.down.{m[1]}.downsample.conv"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", rest):
        return f"{side}.up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", rest):
        return f"{side}.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)", rest):
        return f"{side}.mid.block_{int(m[1]) + 1}.{_VAE_RESNET[m[2]]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)", rest):
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}"
    raise ValueError(f"no LDM name for VAE module {module!r}")


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL -> ``first_stage_model.*``; mid-attention Linear weights become 1x1 convs."""
    num_up_blocks = len(vae.config.up_block_types)
    out = {}
    for name, tensor in _state_dict(vae).items():
        module, suffix = _split(name)
        ldm = _vae_module_to_ldm(module, num_up_blocks)
        if ".mid.attn_1." in ldm and suffix == "weight" and tensor.ndim == 2:
            tensor = tensor[:, :, None, None].contiguous()  # Linear [o, i] -> Conv2d [o, i, 1, 1]
        out[f"{VAE_PREFIX}{ldm}.{suffix}"] = tensor
    return out


# --- text encoders ----------------------------------------------------------------------------


def _hf_clip_text_state(text_encoder: Any) -> dict[str, torch.Tensor]:
    """``text_model.*``-rooted state dict, whether or not transformers has the ``text_model`` level."""
    state = _state_dict(text_encoder)
    state = {
        k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
        for k, v in state.items()
    }
    # The persistent-in-real-files position_ids buffer (non-persistent in current transformers).
    n_pos = text_encoder.config.max_position_embeddings
    state["text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
    return state


def clip_to_ldm(text_encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model in the original layout: ``<prefix>`` + ``embeddings...``/``encoder...``.

    ``prefix`` ends in ``text_model.`` (``cond_stage_model.transformer.text_model.``).
    """
    assert prefix.endswith("text_model.")
    root = prefix[: -len("text_model.")]
    return {
        f"{root}{k}": v for k, v in _hf_clip_text_state(text_encoder).items() if k.startswith("text_model.")
    }


def clip_to_open_clip(text_encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model -> OpenCLIP layout (``transformer.resblocks.{i}.attn.in_proj_weight`` = cat(q, k, v)).

    ``text_projection`` is stored [width, embed_dim], i.e. transposed from the HF Linear weight. An
    encoder without a projection (SD 2.x's ``CLIPTextModel``) gets an identity one, as unused as in
    real SD 2.x files.
    """
    state = _hf_clip_text_state(text_encoder)
    width = text_encoder.config.hidden_size
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "logit_scale": torch.tensor(4.6052),
    }
    if "text_projection.weight" in state:
        out["text_projection"] = state["text_projection.weight"].T.contiguous()
    else:
        out["text_projection"] = torch.eye(width)
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    names["self_attn.out_proj"] = "attn.out_proj"
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for suffix in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{p}_proj.{suffix}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{suffix}"] = torch.cat(qkv, dim=0).contiguous()
            for hf, oc in names.items():
                out[f"{dst}{oc}.{suffix}"] = state[f"{src}{hf}.{suffix}"]
    return {prefix + k: v for k, v in out.items()}


# --- whole checkpoint -------------------------------------------------------------------------


def _ldm_schedule_buffers() -> dict[str, torch.Tensor]:
    """The DDPM buffers LDM checkpoints carry (scaled_linear betas); diffusers ignores them."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float()}


def pipeline_to_ldm_state_dict(pipeline: Any, family: ModelFamily | None = None) -> dict[str, torch.Tensor]:
    components = pipeline.components
    family = ModelFamily(family) if family is not None else detect_family(components)
    state = {**unet_to_ldm(components["unet"]), **vae_to_ldm(components["vae"])}
    if family is ModelFamily.SDXL:
        state.update(clip_to_ldm(components["text_encoder"], SDXL_TE1_PREFIX))
        state.update(clip_to_open_clip(components["text_encoder_2"], SDXL_TE2_PREFIX))
    else:
        state.update(_ldm_schedule_buffers())
        if family is ModelFamily.SD2:
            state.update(clip_to_open_clip(components["text_encoder"], SD2_TE_PREFIX))
        else:
            state.update(clip_to_ldm(components["text_encoder"], SD1_TE_PREFIX))
    return state


def save_ldm_checkpoint(pipeline: Any, path: str | Path, family: ModelFamily | None = None) -> Path:
    """Write ``pipeline`` as one original-layout ``.safetensors`` file and return its path."""
    path = Path(path)
    save_file(pipeline_to_ldm_state_dict(pipeline, family), str(path))
    return path
