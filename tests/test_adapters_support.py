"""Helpers shared by the adapter/mixer/bake/generate tests: tiny bases and hand-written LoRA files.

Files are written directly with safetensors from kohya names (``kohya_module_index``),
so the tests never depend on the studio's own exporter to produce their inputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.formats.kohya_names import kohya_module_index
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline

# Layers kohya sd-scripts adapts (diffusers paths): transformer blocks, text encoders, LoCon convs.
ATTENTION = re.compile(
    r"\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out)$"
)
TEXT = re.compile(r"layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
CONV = re.compile(r"(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.0\.conv)$")

Factors = dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]  # kohya name -> (down, up, alpha)


@pytest.fixture()
def one_thread():
    """For tests of many tiny tensor ops (patch cycles, per-layer SVD): intra-op threads only
    add synchronisation, and on a busy 2-core machine they stall for whole scheduler slices."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(family: str = "sd1", seed: int = 0):
    pipe = build_tiny_pipeline(family, seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_factors(
    pipe,
    family: str,
    seed: int,
    *,
    unet: bool = True,
    te: bool = True,
    conv: bool = False,
    rank: int = 4,
    alpha: float | None = 2.0,
    std: float = 0.2,
) -> Factors:
    """Random kohya LoRA factors for the selected layer groups of ``pipe``."""
    generator = torch.Generator().manual_seed(seed)
    factors: Factors = {}
    for name, ref in kohya_module_index(pipe.components, ModelFamily(family)).items():
        path = "." + ref.path
        chosen = (
            (ref.component == "unet" and unet and ATTENTION.search(path))
            or (ref.component != "unet" and te and TEXT.search(path))
            or (ref.component == "unet" and conv and CONV.search(path))
        )
        if not chosen:
            continue
        shape = ref.module.weight.shape
        down = torch.randn(rank, *shape[1:], generator=generator) * std
        up = torch.randn(shape[0], rank, *[1] * (len(shape) - 2), generator=generator) * std
        factors[name] = (down, up, alpha)
    return factors


def write_kohya(path: Path, factors: Factors, metadata: dict[str, str] | None = None) -> Path:
    tensors = {}
    for name, (down, up, alpha) in factors.items():
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata=metadata)
    return path


def make_kohya(
    path: Path, pipe, family: str, seed: int, metadata: dict[str, str] | None = None, **kwargs
) -> Path:
    return write_kohya(path, lora_factors(pipe, family, seed, **kwargs), metadata)


def weights_of(pipe) -> dict[str, torch.Tensor]:
    """Copies of every UNet and text-encoder parameter, keyed ``component.name``."""
    out = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            out.update({f"{component}.{n}": p.detach().clone() for n, p in model.named_parameters()})
    return out
