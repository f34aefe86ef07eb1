"""The Train tab's "Caption images": caption a dataset's images in place, as ``studio caption`` does.

The captioner is ``default`` (the embedded toyworld captioner), a folder inside the workspace
(a WD14 tagger or a transformers captioner saved there), or a hub id read from the local cache.
Existing captions are kept unless ``overwrite``; every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from studio.app.messages import shown_paths
from studio.app.workspace import Workspace
from studio.captioning.folder import CaptionReport, caption_folder
from studio.captioning.registry import DEFAULT, HUB_ID, CaptionerOptions, load_captioner
from studio.errors import StudioError

CHOICES = [DEFAULT]  # the picker's own entries; a folder in the workspace or a hub id may be typed


def captioner_source(ws: Workspace, choice: str | None) -> str:
    """What ``load_captioner`` gets for a picker value: ``default``, a workspace folder or a hub id."""
    choice = (choice or "").strip() or DEFAULT
    if choice == DEFAULT:
        return DEFAULT
    if (ws.root / choice).exists() or Path(choice).is_absolute():
        return str(ws.resolve(choice))  # refuses anything outside the workspace
    if HUB_ID.fullmatch(choice):
        return choice
    raise StudioError(
        f"{choice!r} is neither a folder in the workspace nor a hub id",
        hint="pick 'default', type a folder such as captioners/wd14, or a hub id owner/name",
    )


def caption_dataset(
    ws: Workspace,
    folder: Path,
    choice: str | None,
    *,
    overwrite: bool = False,
    prefix: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[CaptionReport, str]:
    """Caption ``folder``'s images; returns the report and the line the user sees."""
    source = captioner_source(ws, choice)
    captioner = load_captioner(source, CaptionerOptions())
    report = caption_folder(folder, captioner, prefix=prefix, overwrite=overwrite, on_progress=on_progress)
    name = DEFAULT if source == DEFAULT else (choice or "").strip()
    line = report.summary(name).capitalize() + "."
    if report.failed:
        line += " " + "; ".join(f"{p.path.name}: {p.reason}" for p in report.failed[:5])
    return report, shown_paths(line, ws.root)
