"""The adapter library: trained, imported and baked adapters, with what the table shows.

Files live in ``<workspace>/adapters``; the database row carries the facts read once from
the file's header (family, rank, trigger, image count) so listing never opens tensors.
An import is validated by the project's own header reader before it is copied in: a
pickle, a truncated or hostile file is refused with its reason and nothing is written.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from studio.app.db import AdapterRow, Database, Job
from studio.app.messages import shown_paths
from studio.app.workspace import Workspace, safe_name
from studio.atomic import atomic_path
from studio.errors import StudioError
from studio.formats.inspect import LoraReport, format_report, inspect_file

COLUMNS = ["name", "base", "rank", "trigger", "created", "images", "source"]


def _facts(report: LoraReport) -> dict:
    meta = report.metadata
    images = meta.get("ss_num_train_images")
    return {
        "family": report.family,
        "rank": ", ".join(map(str, report.ranks))
        if len(report.ranks) < 4
        else f"{min(report.ranks)}-{max(report.ranks)}",
        "trigger": meta.get("modelspec.trigger_phrase") or None,
        "images": int(images) if images and str(images).isdigit() else None,
    }


def register_trained(ws: Workspace, db: Database, job: Job, outputs: list[Path], run_dir: Path) -> int:
    kohya = next((p for p in outputs if not p.name.endswith(".diffusers.safetensors")), outputs[0])
    diffusers = next((p for p in outputs if p.name.endswith(".diffusers.safetensors")), None)
    samples = sorted((run_dir / "samples").glob("*.png"))
    thumbnail = None
    if samples:
        target = ws.samples / "thumbnails" / f"{kohya.stem}-{int(time.time())}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(samples[-1], target)
        thumbnail = ws.relative(target)
    return db.add_adapter(
        name=kohya.stem,
        path=ws.relative(kohya),
        diffusers_path=ws.relative(diffusers) if diffusers else None,
        thumbnail=thumbnail,
        source="trained",
        job_id=job.id,
        **_facts(inspect_file(kohya)),
    )


def register_file(ws: Workspace, db: Database, path: Path, source: str) -> int:
    """Add a file already inside ``<workspace>/adapters`` (a bake) to the library."""
    return db.add_adapter(name=path.stem, path=ws.relative(path), source=source, **_facts(inspect_file(path)))


def import_file(ws: Workspace, db: Database, upload: str | Path, name: str | None = None) -> AdapterRow:
    upload = Path(upload)
    stem = safe_name(name or upload.stem, "adapter")
    if upload.suffix.lower() != ".safetensors":
        inspect_file(upload)  # refuses pickles with the project's own message
        raise StudioError("only .safetensors adapter files can be imported", path=upload.name)
    report = inspect_file(upload)  # validates the header: hostile files stop here
    if report.format in ("unknown", "none") or not report.tensor_count:
        raise StudioError("not a LoRA/LyCORIS adapter file (no adapter tensors found)", path=upload.name)
    if any(row.name == stem for row in db.adapters()):
        raise StudioError(
            f"an adapter named {stem!r} is already in the library", hint="import it under another name"
        )
    target = ws.unique(ws.adapters, stem, ".safetensors")
    with atomic_path(target) as tmp:
        shutil.copyfile(upload, tmp)
    try:
        adapter_id = db.add_adapter(name=stem, path=ws.relative(target), source="imported", **_facts(report))
    except StudioError:
        target.unlink(missing_ok=True)
        raise
    return db.adapter(adapter_id)


def adapter_file(ws: Workspace, row: AdapterRow) -> Path:
    return ws.resolve(row.path)


def names(db: Database) -> list[str]:
    return [row.name for row in db.adapters()]


def download_files(ws: Workspace, db: Database, name: str) -> tuple[Path, Path | None]:
    """The adapter's kohya file and its diffusers twin (None when it has none), for download."""
    row = db.adapter(name)
    return adapter_file(ws, row), ws.resolve(row.diffusers_path) if row.diffusers_path else None


def api_rows(db: Database) -> list[dict]:
    """The library for API clients; files under "file" keys (a "path" key makes gradio_client download it)."""
    rows = []
    for row in db.adapters():
        values = asdict(row)
        values["file"], values["diffusers_file"] = values.pop("path"), values.pop("diffusers_path")
        rows.append(values)
    return rows


def rename(ws: Workspace, db: Database, key: int | str, new_name: str) -> AdapterRow:
    row = db.adapter(key)
    stem = safe_name(new_name, "")
    if not stem:
        raise StudioError("type a new name (letters, digits, dot, dash, underscore)")
    if stem == row.name:
        return row
    if any(other.name == stem for other in db.adapters()):
        raise StudioError(f"an adapter named {stem!r} is already in the library")
    old = adapter_file(ws, row)
    target = old.with_name(f"{stem}.safetensors")
    if target.exists():
        raise StudioError("a file with that name already exists", path=target)
    moves = [(old, target)]
    for sidecar in (old.with_suffix(".json"),):
        if sidecar.is_file():
            moves.append((sidecar, target.with_suffix(".json")))
    values = {"name": stem, "path": ws.relative(target)}
    if row.diffusers_path:
        d_old = ws.resolve(row.diffusers_path)
        d_new = target.with_name(f"{stem}.diffusers.safetensors")
        moves.append((d_old, d_new))
        values["diffusers_path"] = ws.relative(d_new)
    for src, dst in moves:
        src.rename(dst)
    db.update_adapter(row.id, **values)
    return db.adapter(row.id)


def delete(ws: Workspace, db: Database, key: int | str) -> None:
    row = db.adapter(key)
    db.delete_adapter(row.id)
    for rel in (row.path, row.diffusers_path, row.thumbnail):
        if rel:
            path = ws.root / rel
            if ws.contains(path):
                path.unlink(missing_ok=True)
                if rel == row.path:
                    path.with_suffix(".json").unlink(missing_ok=True)


def table(db: Database) -> list[list]:
    return [
        [
            r.name,
            r.family or "?",
            r.rank or "?",
            r.trigger or "",
            datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M"),
            "" if r.images is None else r.images,
            r.source,
        ]
        for r in db.adapters()
    ]


def thumbnails(ws: Workspace, db: Database) -> list[tuple[str, str]]:
    return [
        (str(ws.root / r.thumbnail), r.name)
        for r in db.adapters()
        if r.thumbnail and (ws.root / r.thumbnail).is_file()
    ]


def metadata_text(ws: Workspace, row: AdapterRow) -> str:
    return shown_paths(format_report(inspect_file(adapter_file(ws, row))), ws.root)
