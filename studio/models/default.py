"""The embedded default base model, so the studio works offline out of the box.

The repository's ``assets/default-model`` holds the project's own trained SD 1.x-class model
(128 px toyworld scenes; see its TRAINING.md). It ships inside the package as
``studio_assets`` (pyproject.toml maps the folder), so an editable checkout, a wheel and a
plain ``pip install .`` all find it the same way: through the installed package, never
through the source tree. If it is missing, that is said in one line; nothing falls back to
random weights.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from studio.errors import StudioError

ASSETS_PACKAGE = "studio_assets"


def cache_dir() -> Path:
    root = os.environ.get("STUDIO_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "sd-style-studio"
    )
    return Path(root)


def default_model_dir() -> Path:
    """Path of the diffusers folder of the embedded default model."""
    try:
        folder = Path(str(resources.files(ASSETS_PACKAGE) / "default-model"))
    except ModuleNotFoundError:
        folder = None
    if folder is None or not (folder / "model_index.json").is_file():
        raise StudioError(
            "the embedded default model is missing from this installation "
            f"(package {ASSETS_PACKAGE!r} has no default-model)",
            hint="reinstall the studio (pip install .) or pass --base with a model folder",
        )
    return folder
