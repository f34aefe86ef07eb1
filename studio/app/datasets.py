"""Datasets in the workspace: create from uploads, check, and edit captions as a table.

Rows are ``[file, caption, status]`` with ``file`` relative to the dataset folder. Saving
accepts only rows naming an existing image inside that folder, so an edited table can
never make the app write elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from studio.app.messages import shown_paths
from studio.app.uploads import UploadLimits, UploadResult, import_uploads
from studio.app.workspace import Workspace, safe_name
from studio.atomic import write_text
from studio.data.captions import has_word, normalize, read_sidecar
from studio.data.dataset import DatasetConfig
from studio.data.files import is_inside
from studio.data.images import IMAGE_EXTENSIONS
from studio.data.report import DatasetReport, check_dataset
from studio.errors import StudioError
from studio.samples import make_demo_dataset

Row = list[str]
SAMPLE_TRIGGER = "inkstyle"  # the trigger word the app suggests for the sample dataset


def list_datasets(ws: Workspace) -> list[str]:
    return sorted(p.name for p in ws.datasets.iterdir() if p.is_dir() and not p.name.startswith("."))


def create_dataset(ws: Workspace, name: str, files: list[str | Path], limits: UploadLimits) -> UploadResult:
    target = ws.unique(ws.datasets, safe_name(name, "dataset"))
    return import_uploads(files, target, ws.uploads, limits)


def create_sample(ws: Workspace) -> tuple[Path, str]:
    """The 8-shape sample dataset as a new dataset folder, and its trigger word."""
    return make_demo_dataset(ws.unique(ws.datasets, "sample-shapes")), SAMPLE_TRIGGER


def dataset_folder(ws: Workspace, choice: str) -> Path:
    """A dataset name (``datasets/<name>``) or any folder path inside the workspace."""
    if not choice or not choice.strip():
        raise StudioError("choose a dataset or type a folder inside the workspace")
    choice = choice.strip()
    named = ws.datasets / choice
    folder = ws.resolve(named if "/" not in choice and named.is_dir() else choice)
    if not folder.is_dir():
        raise StudioError("not a folder", path=choice)
    return folder


def image_files(folder: Path) -> list[Path]:
    real = Path(os.path.realpath(folder))
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and is_inside(p, real)
    )


def check(folder: Path, trigger: str | None, resolution: int) -> DatasetReport:
    return check_dataset(DatasetConfig(root=folder, trigger=trigger, resolution=resolution))


def _status(report: DatasetReport) -> dict[Path, str]:
    status: dict[Path, list[str]] = {}
    for problem in report.problems:
        status.setdefault(problem.path, []).append("PROBLEM: " + problem.reason)
    for note in report.notes:
        status.setdefault(note.path.with_suffix(""), []).append("note: " + note.reason)
    for path in report.missing_captions:
        status.setdefault(path, []).append("no caption")
    for path, count in report.token_overflow:
        status.setdefault(path, []).append(f"{count} tokens (over {report.token_limit})")
    for group in report.duplicates:
        for path in group[1:]:
            status.setdefault(path, []).append(f"duplicate of {group[0].name}")
    out: dict[Path, str] = {}
    for path, reasons in status.items():
        out[path] = "; ".join(reasons)
    return out


def caption_rows(folder: Path, report: DatasetReport) -> list[Row]:
    status = _status(report)
    real = Path(os.path.realpath(folder))
    rows = []
    for path in image_files(folder):
        caption, _ = read_sidecar(path, real)
        state = status.get(path) or status.get(path.with_suffix("")) or "ok"
        rows.append([path.relative_to(folder).as_posix(), caption.text if caption else "", state])
    return rows


@dataclass
class DatasetView:
    """What the Train tab shows of a dataset: thumbnails, caption rows, the check's report."""

    thumbnails: list[tuple[str, str]]
    rows: list[Row]
    report: str


def dataset_view(
    ws: Workspace, choice: str, trigger: str | None, resolution: int, limit: int = 200
) -> DatasetView:
    folder = dataset_folder(ws, choice)
    checked = check(folder, trigger, resolution)
    bad = {problem.path for problem in checked.problems}
    thumbs = [(str(path), path.name) for path in image_files(folder) if path not in bad][:limit]
    return DatasetView(thumbs, caption_rows(folder, checked), shown_paths(checked.format(), ws.root))


def save_captions(folder: Path, rows: list[Row]) -> int:
    """Write each row's caption to ``<image>.txt``; returns how many files changed."""
    real = Path(os.path.realpath(folder))
    allowed = {p.relative_to(folder).as_posix(): p for p in image_files(folder)}
    changed = 0
    for row in rows:
        if not row or not str(row[0]).strip():
            continue
        name, caption = str(row[0]), normalize(str(row[1] if len(row) > 1 else ""))
        image = allowed.get(name)
        if image is None:
            raise StudioError(f"no image {name!r} in this dataset", path=folder, hint="reload the table")
        current, _ = read_sidecar(image, real)
        if (current.text if current else "") == caption:
            continue
        write_text(image.with_suffix(".txt"), caption + "\n")
        changed += 1
    return changed


def prepend_trigger(rows: list[Row], trigger: str) -> list[Row]:
    trigger = trigger.strip()
    if not trigger:
        raise StudioError("type a trigger word first")
    out = []
    for file, caption, *rest in rows:
        if not has_word(caption, trigger):
            caption = f"{trigger}, {caption}" if caption.strip() else trigger
        out.append([file, caption, *rest])
    return out


def find_replace(rows: list[Row], find: str, replace: str) -> list[Row]:
    if not find:
        raise StudioError("type the text to find")
    return [[file, normalize(caption.replace(find, replace)), *rest] for file, caption, *rest in rows]
