"""Aspect-ratio buckets: train on whole images at their own shape instead of square crops.

Buckets are the largest grid sizes (kohya's ``make_bucket_resolutions``) whose area fits
``resolution**2``, so a batch costs about the same whatever its shape. An image goes to
the bucket of nearest aspect ratio, is resized to cover it and cropped to it.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

from PIL import Image

from studio.errors import StudioError


class Bucket(NamedTuple):
    """A training size in pixels. Named fields because PIL says (w, h) and torch says (h, w)."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def make_buckets(
    resolution: int, step: int = 64, min_side: int | None = None, max_side: int | None = None
) -> list[Bucket]:
    """For each side length on the grid, the longest other side keeping the area within
    ``resolution**2`` (as kohya does), both ways round; sorted from tall to wide.

    Sides are multiples of ``step`` within [``min_side``, ``max_side``], which default to
    ``resolution // 2`` (at least ``step``) and ``resolution * 2``.
    """
    if step <= 0 or step % 8:
        raise StudioError(
            f"bucket step {step} must be a positive multiple of 8", hint="the VAE works in 8 px blocks"
        )
    if resolution < step:
        raise StudioError(f"resolution {resolution} is smaller than the bucket step {step}")
    low = math.ceil(max(step, resolution // 2 if min_side is None else min_side) / step) * step
    high = (resolution * 2 if max_side is None else max_side) // step * step
    max_area = resolution * resolution
    buckets: set[Bucket] = set()
    for side in range(low, high + 1, step):
        other = min(high, max_area // side // step * step)
        if other >= low:
            buckets |= {Bucket(side, other), Bucket(other, side)}
    if not buckets:
        raise StudioError(f"no bucket fits between {low} and {high} px at resolution {resolution}")
    return sorted(buckets, key=lambda b: (b.width / b.height, b.width))


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose log aspect ratio is closest (so 2:1 and 1:2 are equally far from 1:1)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.width / b.height) - target), -b.width * b.height))


def resize_and_crop(
    image: Image.Image, bucket: Bucket, rng: random.Random | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize ``image`` to cover ``bucket`` and crop to it, centred or at a random offset.

    Returns the crop and its top-left ``(y, x)`` in resized pixels: SDXL's
    ``crops_coords_top_left`` conditioning.
    """
    scale = max(bucket.width / image.width, bucket.height / image.height)
    size = (max(bucket.width, round(image.width * scale)), max(bucket.height, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    spare_y, spare_x = size[1] - bucket.height, size[0] - bucket.width
    if rng is None:
        top, left = spare_y // 2, spare_x // 2
    else:
        top, left = rng.randint(0, spare_y), rng.randint(0, spare_x)
    return image.crop((left, top, left + bucket.width, top + bucket.height)), (top, left)
