"""Pixels for a scene: anti-aliased shapes (drawn at 2x, box-filtered) composited over the background."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from trainers.toyworld.scene import COLOURS, Scene, SceneObject

IMAGE_SIZE = 128
_SUPER = 2


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "square":
        h = 0.82 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    elif shape == "triangle":
        top, base = cy - r, cy + 0.7 * r
        draw.polygon([(cx, top), (cx + r, base), (cx - r, base)], fill=255)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=255)
    elif shape == "cross":
        w = 0.32 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def object_mask(obj: SceneObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """Coverage of one object in [0, 1], shape (size, size)."""
    big = size * _SUPER
    canvas = Image.new("L", (big, big), 0)
    cx, cy = obj.centre(big)
    _draw(ImageDraw.Draw(canvas), obj.shape, cx, cy, obj.radius(big))
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(scene: Scene, size: int) -> np.ndarray:
    top = np.array(COLOURS[scene.background.top], dtype=np.float32)
    if scene.background.bottom is None:
        return np.broadcast_to(top, (size, size, 3)).copy()
    bottom = np.array(COLOURS[scene.background.bottom], dtype=np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * top + t * bottom, (size, size, 3)).copy()


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 RGB array (size, size, 3); objects are painted in caption order."""
    image = _background(scene, size)
    for obj in scene.objects:
        alpha = object_mask(obj, size)[..., None]
        image = image * (1 - alpha) + alpha * np.array(COLOURS[obj.colour], dtype=np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
