"""Read a scene back from pixels: background colour, object colour and object mask.

Used to *measure* generated images against the generator's ground truth. Colours are named
by the nearest palette entry; the object is the largest connected region whose colour
differs from the background's (after removing speckle), which works on any image the
model draws, not only on clean renders.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from trainers.toyworld.scene import COLOURS

NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in NAMES], dtype=np.float32)
SHAPE_INPUT = 32  # side of the square mask crop the shape classifier reads


def colour_classes(image: np.ndarray) -> np.ndarray:
    """Index of the nearest named colour for every pixel, shape (H, W)."""
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    distance = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return distance.argmin(-1)


def box_blur(image: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (edge-padded): averages out fine texture before colour naming."""
    if k <= 1:
        return np.asarray(image, dtype=np.float32)
    pad = k // 2
    padded = np.pad(np.asarray(image, dtype=np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    cumulative = padded.cumsum(0).cumsum(1)
    cumulative = np.pad(cumulative, ((1, 0), (1, 0), (0, 0)))
    h, w = image.shape[:2]
    return (
        cumulative[k : k + h, k : k + w]
        - cumulative[:h, k : k + w]
        - cumulative[k : k + h, :w]
        + cumulative[:h, :w]
    ) / (k * k)


def _mode(values: np.ndarray) -> int | None:
    if values.size == 0:
        return None
    return int(np.bincount(values.ravel(), minlength=len(NAMES)).argmax())


def _despeckle(mask: np.ndarray) -> np.ndarray:
    """Keep pixels with at least 5 of their 3x3 neighbourhood set."""
    padded = np.pad(mask.astype(np.int32), 1)
    h, w = mask.shape
    count = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return mask & (count >= 5)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, region = deque([(y, x)]), []
        while queue:
            cy, cx = queue.popleft()
            region.append((cy, cx))
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None: no object found
    mask: np.ndarray  # the object's pixels


def read_single(image: np.ndarray, blur: int = 1, ignore: tuple[str, ...] = ()) -> Reading:
    """Background = most common colour on the border; object = largest non-background region.

    ``ignore`` names colours that count as neither (e.g. a style's black ink or white paper).
    """
    classes = colour_classes(box_blur(image, blur))
    border = np.concatenate(
        [classes[:3].ravel(), classes[-3:].ravel(), classes[:, :3].ravel(), classes[:, -3:].ravel()]
    )
    background = _mode(border)
    foreground = classes != background
    for name in ignore:
        foreground &= classes != NAMES.index(name)
    mask = largest_component(_despeckle(foreground))
    colour = _mode(classes[mask])
    return Reading(NAMES[background], None if colour is None else NAMES[colour], mask)


def shape_input(mask: np.ndarray, side: int = SHAPE_INPUT) -> np.ndarray:
    """The mask's bounding box, padded to a square and resized to ``side`` (float32 in [0, 1])."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.zeros((side, side), np.float32)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    extent = max(y1 - y0, x1 - x0) + 2
    square = np.zeros((extent, extent), np.uint8)
    oy, ox = (extent - (y1 - y0)) // 2, (extent - (x1 - x0)) // 2
    square[oy : oy + y1 - y0, ox : ox + x1 - x0] = mask[y0:y1, x0:x1] * 255
    resized = Image.fromarray(square).resize((side, side), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0
