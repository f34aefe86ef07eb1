"""The model families the studio knows, by id; one folder each, one ``Family`` object each.

Built in: ``sd1``, ``sd2``, ``sdxl``, ``sd3`` (SD3.5) and ``flux`` (Flux.1). A family from elsewhere (a plugin, a test) joins with
``register(MyFamily())`` and is then detected, loaded, trained and mixed like the built-in
ones; nothing else in the studio names families. Detection asks the newest registration
first, so a family that refines another (a variant of SD 1.x) wins over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from studio.errors import StudioError
from studio.families.base import PRESETS, DenoiserInput, Family, TextEmbeddings
from studio.families.flux import FLUX
from studio.families.sd1 import SD1
from studio.families.sd2 import SD2
from studio.families.sd3 import SD3
from studio.families.sdxl import SDXL

__all__ = [
    "FLUX",
    "PRESETS",
    "SD1",
    "SD2",
    "SD3",
    "SDXL",
    "DenoiserInput",
    "Family",
    "TextEmbeddings",
    "detect_family",
    "families",
    "family_for_checkpoint",
    "get_family",
    "register",
    "registered",
    "unregister",
]

_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` known under ``family.id`` (an id already taken by another object is refused)."""
    known = _REGISTRY.get(family.id)
    if known is not None and known is not family:
        raise ValueError(f"a family with id {family.id!r} is already registered")
    _REGISTRY[family.id] = family
    return family


def unregister(family: Family | str) -> None:
    _REGISTRY.pop(family if isinstance(family, str) else family.id, None)


@contextmanager
def registered(family: Family) -> Iterator[Family]:
    """``family`` registered for the duration of a ``with`` block (tests, scripts)."""
    register(family)
    try:
        yield family
    finally:
        unregister(family)


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_REGISTRY.values())


def get_family(value: Family | str) -> Family:
    """The family object for an id (``"sdxl"``) or a family object."""
    if isinstance(value, Family):
        return value
    try:
        return _REGISTRY[value]
    except (KeyError, TypeError):
        raise ValueError(f"{value!r} is not a known model family ({', '.join(_REGISTRY)})") from None


def detect_family(components: dict[str, Any]) -> Family:
    """The family of loaded pipeline components (from the models themselves, not names or paths)."""
    for family in reversed(_REGISTRY.values()):
        if family.matches(components):
            return family
    raise StudioError(
        f"the model is of no known family (it has {', '.join(sorted(components))})",
        hint=f"the studio knows {', '.join(_REGISTRY)}",
    )


def family_for_checkpoint(keys: set[str]) -> Family:
    """The family of an original-layout single-file checkpoint, from its tensor keys."""
    for family in reversed(_REGISTRY.values()):
        if family.matches_checkpoint(keys):
            return family
    raise StudioError("the checkpoint is of no known family", hint=f"the studio knows {', '.join(_REGISTRY)}")


for _family in (SD1, SD2, SDXL, SD3, FLUX):  # general to specific: detection tries them in reverse
    register(_family)
