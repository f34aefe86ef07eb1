"""Write a diffusers Flux transformer as a BFL-layout single file (test utility).

The layout of Black Forest Labs' ``flux1-dev.safetensors`` (transformer only), i.e. the inverse of
diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``: q, k, v fused into
``img_attn.qkv`` / ``txt_attn.qkv`` (single blocks: with the MLP input into ``linear1``), RMSNorm
weights as ``*.norm.query_norm.scale``, the final AdaLayerNorm's halves in BFL's (shift, scale)
order. The block linears' names come from the studio's LoRA name table (``FLUX_DOUBLE`` /
``FLUX_SINGLE``), so diffusers reading the file back also checks that table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from studio.formats.flow_names import FLUX_DOUBLE, FLUX_SINGLE

_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}


def _blocks(state: dict, out: dict, prefix: str, bfl: str, linears: dict, norms: dict) -> None:
    count = len({key.split(".")[1] for key in state if key.startswith(prefix + ".")})
    for i in range(count):
        here = f"{prefix}.{i}."
        for name, parts in {name: parts or (path,) for path, (name, parts) in linears.items()}.items():
            for kind in ("weight", "bias"):
                out[f"{bfl}.{i}.{name}.{kind}"] = torch.cat([state[f"{here}{part}.{kind}"] for part in parts])
        for path, name in norms.items():
            out[f"{bfl}.{i}.{name}.scale"] = state[f"{here}{path}.weight"]


def save_bfl_flux(transformer: torch.nn.Module, path: Path) -> Path:
    state = {k: v.detach().contiguous() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for path_, name in _TOP.items():
        for kind in ("weight", "bias"):
            if f"{path_}.{kind}" in state:
                out[f"{name}.{kind}"] = state[f"{path_}.{kind}"]
    for kind in ("weight", "bias"):  # diffusers' (scale, shift) back to BFL's (shift, scale)
        scale, shift = state[f"norm_out.linear.{kind}"].chunk(2)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale])
    _blocks(state, out, "transformer_blocks", "double_blocks", FLUX_DOUBLE, _DOUBLE_NORMS)
    _blocks(state, out, "single_transformer_blocks", "single_blocks", FLUX_SINGLE, _SINGLE_NORMS)
    save_file({k: v.clone() for k, v in out.items()}, str(path))
    return path
