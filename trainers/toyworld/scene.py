"""Scene descriptions, the caption grammar and deterministic sampling.

A scene is pure data (no pixels): one to three objects, each a shape with a named colour,
size and position, on a plain or two-colour vertical gradient background. Scene ``i`` of a
seed is always the same scene, so training data, held-out prompts and sample datasets
are reproducible from a seed alone.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond")

# Named colours, chosen far apart in RGB so a name can be read back from pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 30),
    "green": (40, 170, 50),
    "cyan": (40, 210, 225),
    "blue": (30, 60, 215),
    "purple": (130, 40, 170),
    "pink": (250, 130, 200),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}

SIZES: dict[str, float] = {"small": 11.0, "large": 21.0}  # radius in pixels at 128 px

# name -> (centre x, centre y) as a fraction of the image side, and the caption phrase.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
JITTER = 0.03  # of the side: objects wobble around their anchor so no two renders are identical


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0  # jitter, fraction of the side
    dy: float = 0.0

    def centre(self, side: int) -> tuple[float, float]:
        fx, fy = POSITIONS[self.position]
        return (fx + self.dx) * side, (fy + self.dy) * side

    def radius(self, side: int) -> float:
        return SIZES[self.size] * side / 128

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {_PHRASE[self.position]}"


@dataclass(frozen=True)
class Background:
    top: str
    bottom: str | None = None  # None: plain

    @property
    def colours(self) -> tuple[str, ...]:
        return (self.top,) if self.bottom is None else (self.top, self.bottom)

    def phrase(self) -> str:
        article = "an" if self.top[0] in "aeiou" else "a"
        if self.bottom is None:
            return f"on {article} {self.top} background"
        return f"on {article} {self.top} to {self.bottom} gradient background"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background

    @property
    def caption(self) -> str:
        return caption_for(self)


def caption_for(scene: Scene) -> str:
    """ "a large red circle on the left and a small blue star at the top, on a yellow background"."""
    return " and ".join(o.phrase() for o in scene.objects) + ", " + scene.background.phrase()


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    colours: Sequence[str] = tuple(COLOURS),
    plain_probability: float = 0.6,
) -> Scene:
    """One random scene: object colours never equal a background colour, positions never repeat."""
    n = n_objects or rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0]
    top = rng.choice(colours)
    bottom = None
    if rng.random() >= plain_probability:
        bottom = rng.choice([c for c in colours if c != top])
    background = Background(top, bottom)
    free = [c for c in colours if c not in background.colours]
    positions = rng.sample(list(POSITIONS), n)
    objects = tuple(
        SceneObject(
            shape=rng.choice(SHAPES),
            colour=rng.choice(free),
            size=rng.choice(tuple(SIZES)),
            position=position,
            dx=rng.uniform(-JITTER, JITTER),
            dy=rng.uniform(-JITTER, JITTER),
        )
        for position in positions
    )
    return Scene(objects, background)


def is_held_out(caption: str) -> bool:
    """About 1 caption in 20 is never trained on: quality is measured on exactly those."""
    return int(hashlib.sha1(caption.encode()).hexdigest()[:8], 16) % 20 == 0


def scene_at(seed: int, index: int, **kwargs) -> Scene:
    """Scene ``index`` of stream ``seed``: the same scene on every machine and run."""
    return sample_scene(random.Random(f"toyworld:{seed}:{index}"), **kwargs)


def training_scene(seed: int, index: int) -> Scene:
    """Like ``scene_at``, but redrawn until its caption is not a held-out one."""
    rng = random.Random(f"toyworld:{seed}:{index}")
    while True:
        scene = sample_scene(rng)
        if not is_held_out(scene.caption):
            return scene


def held_out_scenes(count: int, seed: int = 1, **kwargs) -> Iterator[Scene]:
    """``count`` distinct scenes whose captions the base model never saw (default: one object, plain)."""
    kwargs = {"n_objects": 1, "plain_probability": 1.0, **kwargs}
    seen: set[str] = set()
    index = 0
    while len(seen) < count:
        scene = scene_at(seed, index, **kwargs)
        index += 1
        if is_held_out(scene.caption) and scene.caption not in seen:
            seen.add(scene.caption)
            yield scene


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce (the tokenizer is trained on these)."""
    words = {"a", "an", "and", "on", "the", "at", "in", "to", "background", "gradient"}
    words.update(SHAPES, COLOURS, SIZES, POSITIONS)
    for phrase in _PHRASE.values():
        words.update(phrase.split())
    return sorted(words)
