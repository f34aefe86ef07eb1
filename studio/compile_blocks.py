"""Inductor on a UNet's repeated blocks only, under eager code that CUDA graphs can still replay.

Why: replaying the eager kernels removes their launch cost but not their number; most of what
is left are memory-bound elementwise kernels (norms, SiLU, GEGLU, residual adds, casts) that
inductor fuses. Compiling the whole UNet takes a minute or more; its ResNet and transformer
blocks repeat with a few shapes each, so compiling those alone (PyTorch's "regional
compilation") costs a fraction of that, keeps everything around them eager, and the compiled
kernels run inside our own captured graphs (studio/inference_graphs.py,
studio/training/graph_step.py). Weights stay graph inputs, so the blend engine's in-place
patches show without recompiling.
"""

from __future__ import annotations

import torch
from torch import nn

from studio.compile_cache import use_persistent_compile_cache

# diffusers' UNet and VAE building blocks, outermost first: a block inside one already compiled
# (a BasicTransformerBlock inside its Transformer2DModel, the UNet's Attention) is compiled with it.
BLOCKS = (
    "Transformer2DModel",  # its blocks with the norm and projections around them
    "BasicTransformerBlock",
    "ResnetBlock2D",
    "Downsample2D",
    "Upsample2D",
    "Attention",  # the VAE's mid-block attention
)
RECOMPILE_LIMIT = 64  # one graph per block shape: SD 1.5's UNet and VAE have about 30, SDXL's more


def compile_blocks(model: nn.Module) -> None:
    """Compile each of ``model``'s repeated blocks in place (``nn.Module.compile``).

    Static shapes (``dynamic=False``): a new shape compiles a graph of its own rather than one
    with symbolic sizes, which inductor fuses less well; the recompile limit is raised to hold them.
    """
    use_persistent_compile_cache()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module in outermost_blocks(model):
        module.compile(dynamic=False)


def uncompile_blocks(model: nn.Module) -> None:
    """The eager blocks back (their compiled graphs stay in dynamo's cache for a next session)."""
    for module in outermost_blocks(model):
        module._compiled_call_impl = None


def outermost_blocks(model: nn.Module) -> list[nn.Module]:
    """``model``'s modules of a ``BLOCKS`` type that no other such module contains."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if type(child).__name__ in BLOCKS:
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found
