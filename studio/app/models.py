"""The base-model picker: the embedded default, models under ``<workspace>/models``, models already in
the local hub cache, or a hub id; and downloads from the hub.

Listing never loads weights: a diffusers folder's family comes from its ``model_index.json`` and
``unet/config.json`` (the same ``detect_family`` the loader uses, on config-only stand-ins), a
single-file checkpoint's from its safetensors header (tensor names only). Picker values are
``default``, ``models/<name>`` (relative to the workspace) or ``hub:<owner/name>``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from studio.app.workspace import Workspace
from studio.errors import StudioError

DEFAULT = "default"
DEFAULT_LABEL = "Embedded default model (small SD 1.x, works offline)"
HUB = "hub:"
AUTO_CONFIG = ""
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# What a pipeline needs from a hub repo: configs, tokenizers and safetensors weights (never pickles).
DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


@dataclass(frozen=True)
class ModelEntry:
    """One row of the base picker."""

    value: str  # "default", "models/<name>" or "hub:<id>"
    kind: str  # "embedded", "diffusers", "checkpoint" or "hub"
    family: str | None  # family id ("sd1", "sdxl", ...); None: not detectable (the note says why)
    note: str = ""

    @property
    def label(self) -> str:
        if self.kind == "embedded":
            return DEFAULT_LABEL
        name = self.value.removeprefix(HUB)
        where = {"diffusers": "diffusers folder", "checkpoint": "checkpoint", "hub": "hub cache"}[self.kind]
        return f"{name} ({where}, {self.family or self.note or 'unknown family'})"


def _stand_in(config: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(**config))


def _meta_transformer(class_name: str, config: dict[str, Any]) -> Any:
    """A flow transformer built from its config on the meta device: the class and config the
    families detect, without a byte of weights."""
    import diffusers
    import torch

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise StudioError(f"unknown transformer class {class_name!r}")
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"unusable {class_name} config ({exc})") from None


def folder_family(folder: Path) -> str:
    """The family of a diffusers folder from its configs alone (no weights read)."""
    from studio.families import detect_family

    denoiser = "unet" if (folder / "unet").is_dir() else "transformer"
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        config = json.loads((folder / denoiser / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudioError(f"unreadable model config ({type(exc).__name__})", path=folder) from None
    components: dict[str, Any] = {
        name: object()
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, list) and spec[0]
    }
    if denoiser == "unet":
        components["unet"] = _stand_in(config)
    else:
        components["transformer"] = _meta_transformer(str(index.get("transformer", ["", ""])[1]), config)
    return detect_family(components).id


def checkpoint_family(path: Path) -> str:
    """The family of a single-file checkpoint from its header's tensor names (no weights read)."""
    from studio.families import family_for_checkpoint
    from studio.formats.safetensors_io import read_header

    return family_for_checkpoint(set(read_header(path).tensors)).id


def _entry(value: str, kind: str, detect: Any, path: Path) -> ModelEntry:
    try:
        return ModelEntry(value, kind, detect(path))
    except StudioError:
        return ModelEntry(value, kind, None, "unreadable")


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads, read from the environment now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def cached_pipelines(cache_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(repo id, newest snapshot folder) of every diffusers pipeline in the local hub cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache_dir = cache_dir or hub_cache_dir()
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        snapshots = sorted(repo.revisions, key=lambda rev: rev.last_modified, reverse=True)
        snapshot = next(
            (r.snapshot_path for r in snapshots if (r.snapshot_path / "model_index.json").is_file()), None
        )
        if snapshot is not None:
            found.append((repo.repo_id, snapshot))
    return found


def list_models(ws: Workspace, cache_dir: Path | None = None) -> list[ModelEntry]:
    """The embedded model, then ``<workspace>/models`` (folders and ``.safetensors``), then the hub cache."""
    entries = [ModelEntry(DEFAULT, "embedded", "sd1")]
    for path in sorted(ws.models.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and (path / "model_index.json").is_file():
            entries.append(_entry(f"models/{path.name}", "diffusers", folder_family, path))
        elif path.is_file() and path.suffix.lower() == ".safetensors":
            entries.append(_entry(f"models/{path.name}", "checkpoint", checkpoint_family, path))
    for repo_id, snapshot in cached_pipelines(cache_dir):
        entries.append(_entry(HUB + repo_id, "hub", folder_family, snapshot))
    return entries


def base_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) pairs for a base-model dropdown."""
    return [(entry.label, entry.value) for entry in list_models(ws)]


def config_choices(ws: Workspace, choice: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """For a single-file checkpoint: (the config choices, its family); ([], None) for anything else.

    The first choice (``AUTO_CONFIG``) is diffusers' own config for the detected family, which it
    fetches from the hub or its cache; the others are local diffusers folders of the same family.
    """
    entries = list_models(ws)
    chosen = next((e for e in entries if e.value == choice), None)
    if chosen is None or chosen.kind != "checkpoint":
        return [], None
    family = chosen.family or "unknown"
    choices = [(f"auto: diffusers' config for {family} (needs the network or its cache)", AUTO_CONFIG)]
    choices += [
        (f"config of {e.label}", e.value)
        for e in entries
        if e.kind in ("diffusers", "hub", "embedded") and e.family == chosen.family
    ]
    return choices, chosen.family


def resolve_base(ws: Workspace, choice: str | None, hub_id: str | None = None) -> str:
    """What ``load_base`` gets: a hub id if one is typed, else ``default``, a hub id or a path in the workspace."""
    hub_id = (hub_id or "").strip()
    if hub_id:
        return check_hub_id(hub_id)
    if not choice or choice == DEFAULT:
        return DEFAULT
    if choice.startswith(HUB):
        return check_hub_id(choice.removeprefix(HUB))
    return str(ws.resolve(choice))


def resolve_config(ws: Workspace, choice: str | None) -> str | None:
    """The ``config=`` for ``load_base`` from a config choice: None (auto), a folder, or a cached hub id."""
    if not choice:
        return None
    if choice == DEFAULT:
        from studio.models.default import default_model_dir

        return str(default_model_dir())
    if choice.startswith(HUB):
        return check_hub_id(choice.removeprefix(HUB))
    return str(ws.resolve(choice))


def check_hub_id(hub_id: str) -> str:
    if not _HUB_ID.match(hub_id) or hub_id.startswith((".", "/")):
        raise StudioError(
            f"{hub_id!r} is not a hub id",
            hint="type owner/name, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5",
        )
    return hub_id


def download(hub_id: str, tqdm_class: Any = None) -> Path:
    """Download a pipeline repo into the hub cache (safetensors, configs and tokenizers only).

    Offline (``HF_HUB_OFFLINE=1`` or no network) this is one line naming the id and the way out.
    """
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    hub_id = check_hub_id(hub_id.strip())
    offline = StudioError(
        f"cannot download {hub_id!r}: this machine is offline",
        hint="copy the model's diffusers folder or .safetensors checkpoint into the workspace's models/ folder "
        "from a machine that has it, then pick it in the base list",
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise offline
    try:
        folder = Path(
            snapshot_download(
                hub_id, allow_patterns=DOWNLOAD_PATTERNS, tqdm_class=tqdm_class, etag_timeout=10
            )
        )
    except RepositoryNotFoundError:
        raise StudioError(
            f"no model {hub_id!r} on the hub (or it is private)", hint="check the id on huggingface.co"
        ) from None
    except (OSError, httpx.TransportError):  # no route, refused, DNS, timeout, or the hub's offline mode
        raise offline from None
    if not (folder / "model_index.json").is_file():
        raise StudioError(
            f"{hub_id!r} is not a diffusers pipeline (no model_index.json)", hint="pick a pipeline repo"
        )
    return folder


def base_label(ws: Workspace, spec: str) -> str:
    """The picker value for a base spec stored in a job or recipe."""
    if spec == DEFAULT or _HUB_ID.match(spec) and not spec.startswith("/"):
        return spec
    return ws.relative(spec) if ws.contains(spec) else spec


def base_fields(ws: Workspace, spec: str) -> tuple[str, str, bool]:
    """A stored base spec as the picker shows it: (choice, hub id, found).

    A hub id in the local cache is chosen in the list, another goes into the hub field; a model
    in the workspace is chosen in the list; anything else falls back to the default, ``found`` False.
    """
    label = base_label(ws, spec)
    if label == DEFAULT:
        return DEFAULT, "", True
    values = [value for _, value in base_choices(ws)]
    if label in values:
        return label, "", True
    if _HUB_ID.match(label) and not label.startswith(("/", ".", "models/")):
        return (HUB + label, "", True) if HUB + label in values else (DEFAULT, label, True)
    return DEFAULT, "", False
