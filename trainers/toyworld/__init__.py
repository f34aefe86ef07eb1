"""Toyworld: a deterministic procedural world of coloured shapes with captions and ground truth.

The embedded base model is trained on it, the sample style datasets are drawn from it,
and its ground truth is what lets quality be *measured* instead of eyeballed.
"""

from trainers.toyworld.render import IMAGE_SIZE, object_mask, render_scene
from trainers.toyworld.scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Background,
    Scene,
    SceneObject,
    caption_for,
    held_out_scenes,
    is_held_out,
    sample_scene,
    scene_at,
    training_scene,
    vocabulary,
)

__all__ = [
    "COLOURS",
    "IMAGE_SIZE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Background",
    "Scene",
    "SceneObject",
    "caption_for",
    "held_out_scenes",
    "is_held_out",
    "object_mask",
    "render_scene",
    "sample_scene",
    "scene_at",
    "training_scene",
    "vocabulary",
]
