"""A small built-in style dataset, drawn in code, for the demo and for tests.

Eight 64x64 "ink outline" pictures: simple shapes with thick dark outlines and white
fill on pale backgrounds, with captions that describe only the content (the style is
what the adapter should learn).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from studio.atomic import write_text

_COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (220, 190, 30)}
_SHAPES = ("circle", "square", "triangle", "diamond")


def _draw(shape: str, box: tuple[int, int, int, int], draw: ImageDraw.ImageDraw) -> None:
    x0, y0, x1, y1 = box
    outline = dict(fill=(255, 255, 255), outline=(20, 20, 20), width=4)
    if shape == "circle":
        draw.ellipse(box, **outline)
    elif shape == "square":
        draw.rectangle(box, **outline)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], **outline)
    else:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], **outline)


def make_demo_dataset(folder: str | Path, count: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Write ``count`` PNGs with sidecar ``.txt`` captions into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        colour = rng.choice(list(_COLOURS))
        shape = _SHAPES[i % len(_SHAPES)]
        image = Image.new("RGB", (size, size), tuple(min(255, c + 150) for c in _COLOURS[colour]))
        margin = rng.randint(size // 8, size // 4)
        _draw(shape, (margin, margin, size - margin, size - margin), ImageDraw.Draw(image))
        image.save(folder / f"shape_{i:02d}.png")
        write_text(folder / f"shape_{i:02d}.txt", f"a {shape} on a {colour} background")
    return folder
