"""Per-image loss masks for ``--masked-loss``: where training should learn (white) and not (black).

A mask is ``masks/<path of the image under the dataset, as .png>`` (or ``masks/<name>.png``) in
the dataset folder, else the image's own alpha channel; an image with neither is learned
everywhere. The scan never trains on the ``masks`` folder. The mask is resized and cropped
exactly like its image, then averaged down to the latent grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from studio.data.buckets import Bucket
from studio.data.images import open_image
from studio.errors import DatasetError

MASKS_FOLDER = "masks"


def mask_file(image: Path, root: Path) -> Path | None:
    """The mask file of ``image``, if there is one."""
    try:
        relative = image.relative_to(root).with_suffix(".png")
    except ValueError:  # not under root: only the by-name mask applies
        relative = Path(f"{image.stem}.png")
    for candidate in (root / MASKS_FOLDER / relative, root / MASKS_FOLDER / f"{image.stem}.png"):
        if candidate.is_file():
            return candidate
    return None


def _mask_image(image: Path, root: Path, size: tuple[int, int]) -> Image.Image | None:
    """The mask as an 8-bit grey image at the image's displayed ``size``, or None (learn everywhere)."""
    source = mask_file(image, root)
    with open_image(source or image) as opened:
        if source is not None:
            mask = opened.convert("L")
        elif opened.has_transparency_data:
            mask = ImageOps.exif_transpose(opened).convert("RGBA").getchannel("A")
        else:
            return None
    if mask.size != size:
        raise DatasetError(
            f"mask is {mask.width}x{mask.height} but its image is {size[0]}x{size[1]}",
            path=source,
            hint="make the mask the same size as the image",
        )
    return mask


def load_mask(
    image: Path, root: Path, size: tuple[int, int], bucket: Bucket, top_left: tuple[int, int]
) -> np.ndarray | None:
    """The mask of ``image`` (displayed ``size`` (w, h)) in [0, 1], resized to cover ``bucket`` and
    cropped at ``top_left`` (y, x) as the image was; None when it has none."""
    mask = _mask_image(image, root, size)
    if mask is None:
        return None
    scale = max(bucket.width / mask.width, bucket.height / mask.height)
    size = (max(bucket.width, round(mask.width * scale)), max(bucket.height, round(mask.height * scale)))
    if size != mask.size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    top, left = top_left
    mask = mask.crop((left, top, left + bucket.width, top + bucket.height))
    return np.asarray(mask, dtype=np.float32) / 255.0
