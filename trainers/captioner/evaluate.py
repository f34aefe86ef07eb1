"""Measure a captioner on fresh toyworld renders: are the caption's words the scene's?

The caption text is parsed back with the grammar (not the model's internals), so this measures
what a user gets in the .txt file. Per object of the scene: is an object reported at its
position, and with its colour, shape and size? Position accuracy also counts objects the
captioner invented: correct positions / (true objects + invented ones).

    python -m trainers.captioner.evaluate --count 1000 --seed 1234
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

from PIL import Image

from trainers.toyworld import COLOURS, SHAPES, SIZES, Scene, render_scene, scene_at
from trainers.toyworld.scene import _PHRASE

_OBJECT = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) "
    rf"({'|'.join(_PHRASE.values())})"
)
_BACKGROUND = re.compile(rf"on an? ({'|'.join(COLOURS)})(?: to ({'|'.join(COLOURS)}) gradient)? background$")
_POSITION_OF = {phrase: name for name, phrase in _PHRASE.items()}


def parse(caption: str) -> tuple[dict[str, tuple[str, str, str]], tuple[str, str | None] | None]:
    """{position: (size, colour, shape)} and (top, bottom or None) read from a caption."""
    objects = {_POSITION_OF[m[4]]: (m[1], m[2], m[3]) for m in _OBJECT.finditer(caption)}
    background = _BACKGROUND.search(caption)
    return objects, (background[1], background[2]) if background else None


def accuracy(scenes: Sequence[Scene], captions: Sequence[str]) -> dict[str, float]:
    """Fraction right per slot: colour, shape, size, position (objects) and background colour."""
    right = dict.fromkeys(("colour", "shape", "size", "position", "background"), 0)
    objects = invented = 0
    for scene, caption in zip(scenes, captions, strict=True):
        found, background = parse(caption)
        truth = {o.position: o for o in scene.objects}
        objects += len(truth)
        invented += len(set(found) - set(truth))
        for position, obj in truth.items():
            size, colour, shape = found.get(position, (None, None, None))
            right["position"] += position in found
            right["colour"] += colour == obj.colour
            right["shape"] += shape == obj.shape
            right["size"] += size == obj.size
        right["background"] += background == (scene.background.top, scene.background.bottom)
    result = {k: right[k] / objects for k in ("colour", "shape", "size")}
    result["position"] = right["position"] / (objects + invented)
    result["background"] = right["background"] / len(scenes)
    return result


def measure(caption: Callable[[list[Image.Image]], list[str]], count: int, seed: int) -> dict[str, float]:
    """Caption ``count`` fresh renders of stream ``seed`` (whole grammar) and score them."""
    scenes = [scene_at(seed, i) for i in range(count)]
    captions: list[str] = []
    for start in range(0, count, 100):
        captions += caption([Image.fromarray(render_scene(s)) for s in scenes[start : start + 100]])
    return accuracy(scenes, captions)


def main() -> None:
    from studio.captioning.default import DefaultCaptioner

    parser = argparse.ArgumentParser(description="measure the default captioner on fresh renders")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--folder", default=None, help="captioner folder (default: the embedded one)")
    args = parser.parse_args()
    from pathlib import Path

    captioner = DefaultCaptioner(Path(args.folder) if args.folder else None)
    for name, value in measure(captioner.caption, args.count, args.seed).items():
        print(f"{name}: {value:.4f}")


if __name__ == "__main__":
    main()
