"""A base model with real layer names and shapes but no weights, for work that needs no pixels.

Merging adapters only needs to know which layers exist and how big they are, so
``studio merge`` works on a laptop without a 2-7 GB checkpoint: the family is read from the
adapter files themselves and the full-size architecture is built on the ``meta`` device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.adapters.family import FAMILY_NAMES, declared_family, family_from_shapes
from studio.errors import StudioError
from studio.formats.safetensors_io import load_tensors
from studio.models.configs import build_meta_components
from studio.models.family import Family


@dataclass
class ShapeBase:
    """The parts of ``BaseModel`` that loading and baking adapters use."""

    components: dict[str, Any]
    family: Family
    prediction_type: str
    source: str


def _what_file_says(path: Path) -> tuple[Family | None, str]:
    tensors, metadata = load_tensors(path)
    family = declared_family(tensors, metadata)[0] or family_from_shapes(tensors)
    v = metadata.get("ss_base_model_version") == "sd_v2_v" or metadata.get("modelspec.prediction_type") == "v"
    return family, "v_prediction" if v else "epsilon"


def shape_base_for(paths: list[str | Path]) -> ShapeBase:
    """The full-size architecture the adapter files were made for (they must agree)."""
    found = {Path(path): _what_file_says(Path(path)) for path in paths}
    families = {family for family, _ in found.values() if family is not None}
    if not families:
        raise StudioError(
            "cannot tell which base model these adapters are for (no metadata, no telling shapes)",
            path=next(iter(found)),
            hint="pass --base with the model they were trained on",
        )
    if len(families) > 1:
        names = ", ".join(f"{path.name}: {FAMILY_NAMES[f]}" for path, (f, _) in found.items() if f)
        raise StudioError(f"the adapters are for different base families ({names}); they cannot be merged")
    family = families.pop()
    predictions = {prediction for _, prediction in found.values()}
    prediction = "v_prediction" if "v_prediction" in predictions else "epsilon"
    if family.full_size is None:
        raise StudioError(
            f"there is no full-size {family.display_name} architecture to merge on; pass --base"
        )
    return ShapeBase(build_meta_components(family.full_size), family, prediction, family.full_size)
