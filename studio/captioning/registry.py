"""``--captioner NAME_OR_PATH`` -> a loaded captioner.

``default`` is the embedded toyworld captioner. A folder is recognised by its files: a WD14
tagger has ``model.onnx`` + ``selected_tags.csv``; a transformers captioner has a
``config.json`` naming its model type; the embedded captioner's layout is accepted too. Any
other name is a Hugging Face hub id, read through the hub cache (offline: from the cache only).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from studio.captioning.base import Captioner
from studio.errors import StudioError

DEFAULT = "default"
SENTENCE_TYPES = ("blip",)  # transformers model_type values with a captioner here
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name


@dataclass(frozen=True)
class CaptionerOptions:
    """How to load a captioner and what it writes."""

    style: str | None = None  # None: the captioner's own (first) style
    device: str = "cpu"
    max_length: int = 40  # generated tokens (sentence captioners) or tags (taggers)
    tag_threshold: float = 0.35
    exclude_tags: tuple[str, ...] = field(default_factory=tuple)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_captioner(name: str, options: CaptionerOptions) -> Captioner:
    """Load ``name`` and check that it can write ``options.style``."""
    captioner = _load(name, options)
    if options.style and options.style not in captioner.styles:
        raise StudioError(
            f"captioner {name!r} writes {' or '.join(captioner.styles)}, not {options.style}",
            hint=f"drop --style or pass --style {captioner.styles[0]}",
        )
    return captioner


def _load(name: str, options: CaptionerOptions) -> Captioner:
    from studio.captioning.default import DefaultCaptioner

    style = options.style or "sentence"
    if name == DEFAULT:
        return DefaultCaptioner(device=options.device, style=style)
    path = Path(name).expanduser()
    if path.is_dir():
        return _from_folder(path, options)
    if path.exists() or not HUB_ID.fullmatch(name):
        raise StudioError(
            "no such captioner folder", path=path, hint=f"give a model folder, a hub id or {DEFAULT!r}"
        )
    return _from_hub(name, options)


def _from_folder(folder: Path, options: CaptionerOptions) -> Captioner:
    from studio.captioning.default import WEIGHTS, DefaultCaptioner
    from studio.captioning.wd14 import MODEL_FILE, TAGS_FILE

    if (folder / MODEL_FILE).is_file() and (folder / TAGS_FILE).is_file():
        return _tagger(folder, options)
    config = _read_config(folder)
    if "shapes" in config and (folder / WEIGHTS).is_file():
        return DefaultCaptioner(folder, device=options.device, style=options.style or "sentence")
    if config.get("model_type") in SENTENCE_TYPES:
        return _sentence(str(folder), options, local_only=True)
    raise StudioError(
        "not a captioner folder this studio can load",
        path=folder,
        hint=f"a WD14 tagger ({MODEL_FILE} + {TAGS_FILE}) or a BLIP model folder (config.json)",
    )


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot read config.json ({exc})", path=folder) from None


def _tagger(folder: Path, options: CaptionerOptions) -> Captioner:
    from studio.captioning.wd14 import WD14Tagger

    return WD14Tagger(folder, options.device, options.max_length, options.tag_threshold, options.exclude_tags)


def _sentence(source: str, options: CaptionerOptions, local_only: bool) -> Captioner:
    from studio.captioning.blip import BlipCaptioner

    return BlipCaptioner(source, options.device, options.max_length, local_only=local_only)


def _from_hub(repo_id: str, options: CaptionerOptions) -> Captioner:
    """A hub id: a tagger repo (``selected_tags.csv``) or a transformers captioner, via the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from studio.captioning.wd14 import MODEL_FILE, TAGS_FILE

    local_only = offline()
    try:
        tags = Path(hf_hub_download(repo_id, TAGS_FILE, local_files_only=local_only))
        hf_hub_download(repo_id, MODEL_FILE, local_files_only=local_only)
        return _tagger(tags.parent, options)
    except EntryNotFoundError:
        pass  # no tag list (or none cached): not a tagger, or not here; transformers says which
    except Exception as exc:  # the hub raises many types: no such repo, no network, gated
        raise _unavailable(repo_id, exc) from None
    try:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(repo_id, local_files_only=local_only).model_type
    except Exception as exc:
        raise _unavailable(repo_id, exc) from None
    if model_type not in SENTENCE_TYPES:
        raise StudioError(
            f"captioner {repo_id!r} is a {model_type!r} model; this studio captions with "
            f"{', '.join(SENTENCE_TYPES)} models and WD14 taggers",
            hint="pick a BLIP captioning model or a wd-*-tagger repository",
        )
    return _sentence(repo_id, options, local_only=local_only)


def _unavailable(repo_id: str, exc: Exception) -> StudioError:
    if offline():
        return StudioError(
            f"cannot load captioner {repo_id!r}: this machine is offline (HF_HUB_OFFLINE=1) and "
            "it is not in the Hugging Face cache",
            hint="download it on a connected machine and pass --captioner /path/to/its/folder",
        )
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StudioError(
        f"cannot load captioner {repo_id!r} from the Hugging Face hub ({reason})",
        hint="check the id, or pass --captioner /path/to/a/local/folder",
    )
