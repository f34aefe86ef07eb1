"""The captioner protocol: a batch of RGB images in, one caption per image out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from PIL import Image


class Captioner(Protocol):
    """Anything that captions images; ``studio caption`` batches the calls itself."""

    name: str  # what the summary line and errors call it (a hub id, a folder, "default")
    styles: tuple[str, ...]  # "sentence" and/or "tags"; the first is what it writes by default

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, in order; ``images`` are RGB."""
        ...


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """``items`` in consecutive chunks of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
