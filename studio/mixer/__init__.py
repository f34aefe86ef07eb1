"""Blend several adapters: slider state, in-place weight patching, and baking to one file."""

from studio.mixer.bake import BakeReport, bake_blend
from studio.mixer.blend import AdapterWeights, BlendItem, blend_terms, unet_block
from studio.mixer.engine import BlendEngine, PatchStats

__all__ = [
    "AdapterWeights",
    "BakeReport",
    "BlendEngine",
    "BlendItem",
    "PatchStats",
    "bake_blend",
    "blend_terms",
    "unet_block",
]
