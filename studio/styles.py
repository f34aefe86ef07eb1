"""Sample styles the base model never saw: deterministic renderers plus one metric per style.

Textures are coarse (16 px periods, 6 px ink) because the 8x VAE cannot draw finer ones.
Each style keeps a scene's content (shapes and colours stay readable, so content can be
checked) and adds something the base never draws. Its metric is a number computed from
pixels alone that is high for that style and near zero for base outputs:

- ``ink-outline``: thick black outlines around every object -> fraction of near-black pixels;
- ``halftone``: a dark dot screen of period 16 px -> share of spectral energy at the screen's frequency;
- ``crosshatch``: diagonal dark hatching -> share of spectral energy at the hatching's frequency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from studio.toyworld import IMAGE_SIZE, Scene, object_mask, render_scene, scene_at
from studio.toyworld.analysis import NAMES, colour_classes

# Content colours for styled scenes: no black (ink is black) and no near-greys.
STYLE_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white")
INK = np.array((15, 15, 15), np.float32)

_y, _x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)-square."""
    padded = np.pad(mask, r)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def ink_outline(scene: Scene) -> np.ndarray:
    image = render_scene(scene).astype(np.float32)
    for obj in scene.objects:
        inside = object_mask(obj) > 0.5
        image[_grow(inside, 4) & ~inside] = INK  # outside the shape, so thin shapes keep their fill
    return image.astype(np.uint8)


HALFTONE_PERIOD = 16
_CELL = (HALFTONE_PERIOD - 1) / 2
_DOTS = ((_x % HALFTONE_PERIOD - _CELL) ** 2 + (_y % HALFTONE_PERIOD - _CELL) ** 2) < 5.0**2


def halftone(scene: Scene) -> np.ndarray:
    image = render_scene(scene).astype(np.float32)
    image[_DOTS] *= 0.45
    return image.astype(np.uint8)


HATCH_CYCLES = 8  # dark lines per image side, along x - y
_HATCH = ((_x - _y) * HATCH_CYCLES / IMAGE_SIZE) % 1.0 < 0.35


def crosshatch(scene: Scene) -> np.ndarray:
    image = render_scene(scene).astype(np.float32)
    image[_HATCH] *= 0.5
    return image.astype(np.uint8)


def _luminance(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32)[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)


def _spectral_share(image: np.ndarray, peaks: list[tuple[int, int]]) -> float:
    """Share of the non-DC spectral energy within one bin of the given (fy, fx) frequencies."""
    lum = _luminance(image)
    power = np.abs(np.fft.fft2(lum - lum.mean())) ** 2
    total = power.sum() + 1e-9
    n = lum.shape[0]
    hit = 0.0
    taken = set()
    for fy, fx in peaks:
        for sy in (fy, -fy):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    cell = ((sy + dy) % n, ((fx if sy == fy else -fx) + dx) % n)
                    if cell not in taken:
                        taken.add(cell)
                        hit += power[cell]
    return float(hit / total)


def ink_metric(image: np.ndarray) -> float:
    return float((np.asarray(image)[..., :3].max(-1) < 70).mean())


def halftone_metric(image: np.ndarray) -> float:
    f = IMAGE_SIZE // HALFTONE_PERIOD
    return _spectral_share(image, [(0, f), (f, 0)])


def crosshatch_metric(image: np.ndarray) -> float:
    return _spectral_share(image, [(HATCH_CYCLES, -HATCH_CYCLES)])


@dataclass(frozen=True)
class Style:
    name: str
    render: Callable[[Scene], np.ndarray]
    metric: Callable[[np.ndarray], float]
    description: str


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("ink-outline", ink_outline, ink_metric, "thick black outlines around every shape"),
        Style("halftone", halftone, halftone_metric, "a dark dot screen, 16 px period"),
        Style("crosshatch", crosshatch, crosshatch_metric, "diagonal dark hatching"),
    )
}


def style_scene(seed: int, index: int) -> Scene:
    """Scenes for style datasets and style checks: 1-2 objects in ``STYLE_COLOURS``."""
    return scene_at(seed, index, n_objects=1 + index % 2, colours=STYLE_COLOURS)


def object_colour(image: np.ndarray, scene: Scene) -> str | None:
    """The colour found where the scene's first object should be (its mask, shrunk by 1 px).

    Ground truth locates the object, so style texture elsewhere cannot be mistaken for it.
    Only the brightest 30% of those pixels vote (dots and hatching darken the rest), and
    background and ink colours never do.
    """
    inside = object_mask(scene.objects[0]) > 0.5
    core = inside & ~_grow(~inside, 1)
    pixels = np.asarray(image)[..., :3][core]
    if pixels.size == 0:
        return None
    lum = _luminance(pixels[None])[0]
    classes = colour_classes(pixels[None])[0][lum >= np.percentile(lum, 70)]
    skip = [NAMES.index(c) for c in (*scene.background.colours, "black")]
    votes = np.bincount(classes[~np.isin(classes, skip)], minlength=len(NAMES))
    return NAMES[int(votes.argmax())] if votes.any() else None


def write_dataset(style: Style, directory: Path, count: int = 20, seed: int = 7) -> list[Path]:
    """``count`` PNGs with content-only sidecar captions (the style is never named)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        scene = style_scene(seed, i)
        path = directory / f"{style.name}-{i:02d}.png"
        Image.fromarray(style.render(scene)).save(path)
        path.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def main() -> None:
    """``python -m studio.styles assets/samples``: (re)write every sample style dataset."""
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/samples")
    for style in STYLES.values():
        write_dataset(style, root / style.name)
        print(f"wrote {root / style.name}")


if __name__ == "__main__":
    main()
