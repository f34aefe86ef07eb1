"""Turn captions and images into what the UNet consumes, with caches keyed by content.

Text: the family says how (``Family.encode_text``; SD 1.x/2.x use the text encoder's last
hidden state, SDXL both encoders' penultimate ones plus the second's pooled output).
Latents: the VAE's distribution mode, so a cached latent is the same every time it is
read (the cache key is the sample, never the step).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from studio.families import Family, TextEmbeddings, get_family
from studio.families.sdxl import sdxl_time_ids
from studio.families.stable_diffusion import tokenize

__all__ = ["ContentCache", "encode_latents", "encode_text", "sdxl_time_ids", "tokenize"]


def encode_text(
    components: dict[str, Any], family: Family | str, captions: list[str], device: torch.device
) -> TextEmbeddings:
    """``(encoder_hidden_states, pooled)`` as ``family`` conditions on them; pooled is None outside SDXL."""
    return get_family(family).encode_text(components, captions, device)


@torch.no_grad()
def encode_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


class ContentCache:
    """A dict that computes missing entries; keys describe the content (image + crop, caption text)."""

    def __init__(self, make: Callable[[Hashable], Any]):
        self._make = make
        self._store: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._store

    def get(self, key: Hashable) -> Any:
        if key not in self._store:
            self._store[key] = self._make(key)
        return self._store[key]
