"""The embedded default base model, so the studio works offline out of the box.

``assets/default-model`` holds the project's own trained SD 1.x-class model (128 px
toyworld scenes; see its TRAINING.md), and that is used. A checkout without it falls back
to a tiny SD 1.x pipeline with random weights, built on first use and cached; it
exercises every code path but draws noise.
"""

from __future__ import annotations

import os
from pathlib import Path

from studio.atomic import atomic_dir

ASSETS = Path(__file__).resolve().parents[2] / "assets"
_BUILT_NAME = "default-tiny-sd1-v1"


def cache_dir() -> Path:
    root = os.environ.get("STUDIO_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "sd-style-studio"
    )
    return Path(root)


def default_model_dir() -> Path:
    """Path of a diffusers folder holding the default base, building it if needed."""
    shipped = ASSETS / "default-model"
    if (shipped / "model_index.json").is_file():
        return shipped
    built = cache_dir() / _BUILT_NAME
    if not (built / "model_index.json").is_file():
        from studio.models.tiny import build_tiny_pipeline

        with atomic_dir(built) as tmp:
            build_tiny_pipeline("sd1", seed=0).save_pretrained(tmp)
    return built
