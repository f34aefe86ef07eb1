"""Adapter files (kohya, LyCORIS, diffusers, peft) loaded as per-layer ΔW recipes for a base."""

from studio.adapters.adapter import Adapter, LayerKey, LoadReport
from studio.adapters.info import AdapterInfo, AdapterWarning
from studio.adapters.layers import AdapterLayer, FullLayer, LohaLayer, LokrLayer, LoraLayer
from studio.adapters.load import file_sha256, load_adapter

__all__ = [
    "Adapter",
    "AdapterInfo",
    "AdapterLayer",
    "AdapterWarning",
    "FullLayer",
    "LayerKey",
    "LoadReport",
    "LohaLayer",
    "LokrLayer",
    "LoraLayer",
    "file_sha256",
    "load_adapter",
]
