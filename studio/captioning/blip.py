"""Sentence captions from a BLIP model (``BlipForConditionalGeneration``) through transformers.

BLIP needs no remote code (Florence-2 does), and its processor and model load with the plain
``from_pretrained`` from a hub id or a local folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


class BlipCaptioner:
    """``--captioner Salesforce/blip-image-captioning-base`` (or a folder saved from it)."""

    styles = ("sentence",)

    def __init__(self, source: str, device: str = "cpu", max_length: int = 40, local_only: bool = False):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.name = source
        self.device = torch.device(device)
        self.max_length = max_length
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = BlipProcessor.from_pretrained(source, local_files_only=local_only)
        self.model = BlipForConditionalGeneration.from_pretrained(
            source, local_files_only=local_only, dtype=dtype
        )
        self.model.to(self.device).eval()

    @torch.no_grad()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device, self.model.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_length)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]
