"""Turn captions and images into what the UNet consumes, with caches keyed by content.

Text: SD 1.x/2.x use the text encoder's last hidden state; SDXL concatenates both
encoders' penultimate hidden states and adds the second encoder's pooled output plus
size/crop ids. Latents: the VAE's distribution mode, so a cached latent is the same
every time it is read (the cache key is the sample, never the step).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from studio.models.family import ModelFamily


def tokenize(tokenizer: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)


def encode_text(
    components: dict[str, Any], family: ModelFamily, captions: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(encoder_hidden_states, pooled)``; pooled is None outside SDXL."""
    if family is not ModelFamily.SDXL:
        ids = tokenize(components["tokenizer"], captions, device)
        return components["text_encoder"](ids)[0], None
    hidden = []
    pooled = None
    for te_name, tok_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        out = components[te_name](tokenize(components[tok_name], captions, device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if te_name == "text_encoder_2":
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(
    original_sizes: list[tuple[int, int]],
    crops: list[tuple[int, int]],
    target: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """SDXL size conditioning: original (h, w), crop top-left (y, x), target (h, w) per sample."""
    rows = [list(o) + list(c) + list(target) for o, c in zip(original_sizes, crops)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


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
