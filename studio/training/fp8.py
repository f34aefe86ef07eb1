"""An fp8 frozen base: the denoiser's weights stored in float8, each layer computed in the run's dtype.

Issue 14's memory targets (Flux.1-dev at 1024 px in 20 GB) need the 12 B-parameter transformer in
one byte a weight. diffusers' layerwise casting does exactly that: every Linear/Conv keeps its
weight in ``float8_e4m3fn`` and a hook upcasts it for its own forward, then drops the copy. It runs
before LoRA is attached, so only the base layers get the hooks and the LoRA weights stay fp32.
Norms and the patch/position embeddings stay in the compute dtype (diffusers' default skip list).
Cost: one cast per layer per forward (and per recomputation under gradient checkpointing), and
fp8's 3-bit mantissa in the frozen weights, which the loss tolerates (tests/test_train_fp8.py).
"""

from __future__ import annotations

import torch

STORAGE = torch.float8_e4m3fn


def store_in_fp8(denoiser: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Cast ``denoiser``'s layer weights to fp8 in place; each forward computes in ``compute_dtype``."""
    if denoiser.dtype != compute_dtype:
        denoiser.to(dtype=compute_dtype)
    denoiser.enable_layerwise_casting(storage_dtype=STORAGE, compute_dtype=compute_dtype)
