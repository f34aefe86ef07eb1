"""Adapter files (kohya, LyCORIS, diffusers, peft) loaded as per-layer ΔW recipes for a base."""

from studio.adapters.adapter import Adapter, LayerKey, LoadReport
from studio.adapters.info import AdapterInfo, AdapterWarning
from studio.adapters.layers import AdapterDelta, FullDelta, LohaDelta, LokrDelta, LoraDelta
from studio.adapters.load import file_sha256, load_adapter

__all__ = [
    "Adapter",
    "AdapterInfo",
    "AdapterDelta",
    "AdapterWarning",
    "FullDelta",
    "LayerKey",
    "LoadReport",
    "LohaDelta",
    "LokrDelta",
    "LoraDelta",
    "file_sha256",
    "load_adapter",
]
