"""Sample styles the base model never saw: deterministic renderers plus one metric per style.

Textures are coarse (16 px periods, 6 px ink) because the 8x VAE cannot draw finer ones.
Each style keeps a scene's content (shapes and colours stay readable, so content can be
checked) and adds something the base never draws. Its metric is a number computed from
pixels alone that is high for that style and near zero for base outputs:

- ``ink-outline``: thick black outlines around every object -> share of the pixels near a
  contour that are ink (``ink_metric``);
- ``halftone``: a dark dot screen of period 16 px -> share of spectral energy at the screen's frequency;
- ``crosshatch``: diagonal dark hatching -> share of spectral energy at the hatching's frequency.

A LoRA can draw at best what the VAE decodes, so each metric must survive a VAE round trip
(encode + decode of the dataset images). The old ink metric, the share of pixels with max
channel < 70, on 4 px outlines, did not: the VAE turns black outlines into dark-grey halos,
and the 20 ink images scored 0.051, their round trip 0.019 (38%). Now outlines are 6 px, a
pixel is ink when its largest channel is < 40% of the largest within 8 px (a halo on any
background counts; halftone dots, at 45% of their surroundings, and hatching, at 50%, do
not), and "near a contour" means some channel spans > 100 within 8 px. Dividing by the
contour area rather than the image keeps the level independent of the number and size of
objects: the held-out check prompts have one object, the dataset 1.5 on average, and an ink
share of the whole image would be 0.056 on ink renders of the check prompts against 0.079
on the dataset, capping a perfect LoRA at ~70% of the way; per contour both are ~0.31.

Means over the 20 images of each sample dataset, its VAE round trip, and 12 base outputs for
``check_scenes()`` (embedded model, 20 steps, CFG 5):

| metric | ink data / round trip | halftone data / round trip | crosshatch data / round trip | base |
| --- | --- | --- | --- | --- |
| ink | **0.309 / 0.267 (86%)** | 0.031 / 0.007 | 0.023 / 0.011 | 0.0006 |
| halftone | 0.032 / 0.033 | **0.341 / 0.435** | 0.006 / 0.008 | 0.023 |
| crosshatch | 0.003 / 0.003 | 0.057 / 0.042 | **0.530 / 0.608** | 0.006 |

On 4 px outlines the ink metric keeps 72% in the round trip (0.226 -> 0.164). A contour range
of 120 would keep 91%, but score the halftone data 0.055; a ratio of 0.45 would count the dots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from trainers.toyworld import IMAGE_SIZE, Scene, held_out_scenes, object_mask, render_scene, scene_at
from trainers.toyworld.analysis import NAMES, colour_classes

# Content colours for styled scenes: no black (ink is black) and no near-greys.
STYLE_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white")
INK = np.array((15, 15, 15), np.float32)
OUTLINE = 6  # px; the VAE blurs a 4 px outline into a grey halo (see ``ink_metric``)

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
        image[_grow(inside, OUTLINE) & ~inside] = INK  # outside the shape, so thin shapes keep their fill
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


INK_WINDOW = 8  # px: the neighbourhood (a 17 px square) reaches past a blurred outline
INK_RATIO = 0.4  # darker than this share of the neighbourhood's brightest pixel counts as ink
CONTOUR_RANGE = 100  # a channel spanning more than this in the neighbourhood: near a contour


def _local_max(values: np.ndarray, r: int) -> np.ndarray:
    """Maximum over the (2r+1)-square around each pixel (edges repeated)."""
    padded = np.pad(values, r, mode="edge")
    rows = sliding_window_view(padded, 2 * r + 1, axis=0).max(-1)
    return sliding_window_view(rows, 2 * r + 1, axis=1).max(-1)


def ink_metric(image: np.ndarray) -> float:
    """Share of the pixels near a contour that are ink (see the module docstring).

    Dividing by the contour area, not the image area, makes the level independent of how
    many objects a picture has and how large they are.
    """
    rgb = np.asarray(image)[..., :3].astype(np.float32)
    value = rgb.max(-1)
    ink = value < INK_RATIO * np.maximum(_local_max(value, INK_WINDOW), 1.0)
    spans = [_local_max(c, INK_WINDOW) + _local_max(-c, INK_WINDOW) for c in rgb.transpose(2, 0, 1)]
    near = (np.max(spans, axis=0) > CONTOUR_RANGE) | ink
    return float(ink.sum() / max(int(near.sum()), 1))


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


# The style checks of issue 5 §4, shared by tests/test_style_learning.py and bench/style_sweep.py:
# images for held-out prompts at these settings, scored per label of ``check_weights``.
CHECK_STEPS, CHECK_GUIDANCE = 20, 5.0
MOVED_MIN, COLOUR_MIN = 0.6, 0.7


def check_scenes(count: int = 12) -> list[Scene]:
    """Held-out one-object prompts in style colours (image i is drawn with seed i)."""
    return list(held_out_scenes(count, seed=3, colours=STYLE_COLOURS))


def check_weights(a: str, b: str) -> dict[str, dict[str, float]]:
    """Label -> adapter weights: the base, each style at 0.5 and 1.0, and a 50/50 blend."""
    return {
        "base": {},
        f"{a} 0.5": {a: 0.5},
        f"{a} 1.0": {a: 1.0},
        f"{b} 0.5": {b: 0.5},
        f"{b} 1.0": {b: 1.0},
        "blend": {a: 0.5, b: 0.5},
    }


def score_images(
    images: dict[str, list[np.ndarray]], scenes: list[Scene], names: tuple[str, str]
) -> dict[str, dict[str, float]]:
    """Metric (or "colour", the share of first objects read back right) -> label -> mean."""
    table = {
        name: {
            label: float(np.mean([STYLES[name].metric(im) for im in ims])) for label, ims in images.items()
        }
        for name in names
    }
    table["colour"] = {
        label: float(np.mean([object_colour(im, s) == s.objects[0].colour for im, s in zip(ims, scenes)]))
        for label, ims in images.items()
    }
    return table


def dataset_level(name: str, root: Path) -> float:
    """The style metric's mean over the PNGs of ``root / name``: the level training aims at."""
    paths = sorted((root / name).glob("*.png"))
    return float(np.mean([STYLES[name].metric(np.asarray(Image.open(p).convert("RGB"))) for p in paths]))


def style_checks(
    table: dict[str, dict[str, float]], levels: dict[str, float], a: str, b: str
) -> dict[str, float | bool]:
    """The issue's checks per style: share of the way moved, growth with weight, colour, blend."""
    checks: dict[str, float | bool] = {}
    for name, other in ((a, b), (b, a)):
        row, level = table[name], levels[name]
        checks[f"{name} moved"] = (row[f"{name} 1.0"] - row["base"]) / (level - row["base"])
        checks[f"{name} grows"] = row["base"] < row[f"{name} 0.5"] < row[f"{name} 1.0"]
        checks[f"{name} colour"] = table["colour"][f"{name} 1.0"]
        checks[f"{name} blend"] = row[f"{other} 1.0"] < row["blend"] < row[f"{name} 1.0"]
    return checks


def failed_checks(checks: dict[str, float | bool]) -> list[str]:
    """The keys of ``style_checks`` not met (training time is checked apart: it is the machine's)."""
    minimum = {"moved": MOVED_MIN, "colour": COLOUR_MIN}
    failed = []
    for key, value in checks.items():
        kind = key.rsplit(" ", 1)[-1]
        if not (value >= minimum[kind] if kind in minimum else value):
            failed.append(key)
    return failed


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
    """``python -m trainers.styles assets/samples``: (re)write every sample style dataset."""
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/samples")
    for style in STYLES.values():
        write_dataset(style, root / style.name)
        print(f"wrote {root / style.name}")


if __name__ == "__main__":
    main()
