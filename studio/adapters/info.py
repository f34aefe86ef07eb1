"""What a LoRA file says about itself: trigger phrase, tags, base model, rank.

Sources, in order of trust: the safetensors header (kohya ``ss_*`` and ``modelspec.*``
keys), then a sidecar ``<file stem>.json`` as written by A1111's "edit metadata" dialog
and Civitai helpers (``activation text``, ``preferred weight``, ``sd version``).
The trigger is ``modelspec.trigger_phrase``, else the sidecar's activation text, else the
most frequent training tag: a header the author wrote beats one a tool inferred.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class AdapterWarning(UserWarning):
    """Something about an adapter file the user should know, that does not stop loading."""


@dataclass(frozen=True)
class AdapterInfo:
    title: str
    trigger: str | None = None
    tags: list[tuple[str, int]] = field(default_factory=list)  # (tag, count), most frequent first
    base_model: str | None = None
    network_module: str | None = None
    rank: str | None = None  # "16", or "Dynamic (4-32)" when layers differ
    alpha: str | None = None
    preferred_weight: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def clip_skip(self) -> int | None:
        """The clip skip the adapter was trained with (kohya's ``ss_clip_skip``), if it says."""
        try:
            return int(self.metadata.get("ss_clip_skip", ""))
        except ValueError:
            return None

    def lines(self) -> list[str]:
        """Human-readable summary, one fact a line."""
        out = [f"title: {self.title}"]
        for label, value in (
            ("trigger", self.trigger),
            ("base model", self.base_model),
            ("network", self.network_module),
            ("rank", self.rank),
            ("alpha", self.alpha),
            ("preferred weight", self.preferred_weight),
        ):
            if value is not None:
                out.append(f"{label}: {value}")
        if self.tags:
            out.append("tags: " + ", ".join(f"{tag} ({count})" for tag, count in self.tags[:20]))
        return out


def tag_counts(metadata: dict[str, str], path: Path) -> list[tuple[str, int]]:
    """Tags of ``ss_tag_frequency`` summed over dataset folders, most frequent first."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return []
    try:
        per_dir = json.loads(raw)
        counts: Counter[str] = Counter()
        for tags in per_dir.values():
            for tag, count in tags.items():
                counts[tag.strip()] += int(count)
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        warnings.warn(
            f"{path}: ss_tag_frequency is not valid JSON; tags ignored", AdapterWarning, stacklevel=3
        )
        return []
    return sorted(((t, c) for t, c in counts.items() if t), key=lambda tc: (-tc[1], tc[0]))


def read_sidecar(path: Path) -> dict:
    """The A1111/Civitai sidecar ``<stem>.json`` next to the file, or ``{}``.

    A broken sidecar only loses display metadata, so it is a warning, not an error.
    """
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(
            f"{sidecar}: unreadable sidecar metadata ({exc}); ignored", AdapterWarning, stacklevel=3
        )
        return {}
    return data if isinstance(data, dict) else {}


def _rank_text(ranks: list[int]) -> str | None:
    if not ranks:
        return None
    low, high = min(ranks), max(ranks)
    return str(low) if low == high else f"Dynamic ({low}-{high})"


def adapter_info(path: Path, metadata: dict[str, str], sidecar: dict, ranks: list[int]) -> AdapterInfo:
    tags = tag_counts(metadata, path)
    for tag in metadata.get("modelspec.tags", "").split(","):
        if tag.strip() and tag.strip() not in dict(tags):
            tags.append((tag.strip(), 0))
    trigger = (
        metadata.get("modelspec.trigger_phrase")
        or str(sidecar.get("activation text") or "").strip()
        or (tags[0][0] if tags and tags[0][1] > 0 else None)
    )
    try:
        preferred = float(sidecar["preferred weight"]) if sidecar.get("preferred weight") else None
    except (TypeError, ValueError):
        warnings.warn(
            f"{path.with_suffix('.json')}: 'preferred weight' is not a number; ignored",
            AdapterWarning,
            stacklevel=3,
        )
        preferred = None
    base = (
        metadata.get("ss_sd_model_name")
        or metadata.get("ss_base_model_version")
        or metadata.get("modelspec.architecture")
        or sidecar.get("sd version")
        or None
    )
    return AdapterInfo(
        title=metadata.get("modelspec.title") or metadata.get("ss_output_name") or path.stem,
        trigger=trigger or None,
        tags=tags,
        base_model=base,
        network_module=metadata.get("ss_network_module"),
        rank=metadata.get("ss_network_dim") or _rank_text(ranks),
        alpha=metadata.get("ss_network_alpha"),
        preferred_weight=preferred,
        metadata=dict(metadata),
    )
