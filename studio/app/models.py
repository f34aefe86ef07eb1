"""The base-model picker: the embedded default, models under ``<workspace>/models``, or a hub id."""

from __future__ import annotations

import re

from studio.app.workspace import Workspace
from studio.errors import StudioError

DEFAULT = "default"
DEFAULT_LABEL = "Embedded default model (small SD 1.x, works offline)"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def base_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) pairs; values are ``default`` or paths relative to the workspace."""
    choices = [(DEFAULT_LABEL, DEFAULT)]
    for path in sorted(ws.models.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and (path / "model_index.json").is_file():
            choices.append((f"models/{path.name} (diffusers folder)", f"models/{path.name}"))
        elif path.is_file() and path.suffix.lower() == ".safetensors":
            choices.append((f"models/{path.name} (checkpoint)", f"models/{path.name}"))
    return choices


def resolve_base(ws: Workspace, choice: str | None, hub_id: str | None = None) -> str:
    """What ``load_base`` gets: a hub id if one is typed, else ``default`` or a path in the workspace."""
    hub_id = (hub_id or "").strip()
    if hub_id:
        if not _HUB_ID.match(hub_id) or hub_id.startswith((".", "/")):
            raise StudioError(
                f"{hub_id!r} is not a hub id",
                hint="type owner/name, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5",
            )
        return hub_id
    if not choice or choice == DEFAULT:
        return DEFAULT
    return str(ws.resolve(choice))


def base_label(ws: Workspace, spec: str) -> str:
    """The picker value for a base spec stored in a job or recipe."""
    if spec == DEFAULT or _HUB_ID.match(spec) and not spec.startswith("/"):
        return spec
    return ws.relative(spec) if ws.contains(spec) else spec


def base_fields(ws: Workspace, spec: str) -> tuple[str, str, bool]:
    """A stored base spec as the picker shows it: (choice, hub id, found).

    A hub id goes into the hub field; a model in the workspace is chosen in the list;
    anything else (a model that is not here) falls back to the default, ``found`` False.
    """
    label = base_label(ws, spec)
    if label == DEFAULT:
        return DEFAULT, "", True
    if label in [value for _, value in base_choices(ws)]:
        return label, "", True
    if _HUB_ID.match(label) and not label.startswith(("/", ".", "models/")):
        return DEFAULT, label, True
    return DEFAULT, "", False
