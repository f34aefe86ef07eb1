"""Uploaded files into a dataset folder, without trusting them.

A zip is checked entry by entry before anything is written: ``..`` or absolute names,
symlinks, too many files, too many bytes once inflated, or a compression ratio only a
zip bomb reaches all refuse the whole archive with the entry named. Sizes are counted
while inflating too (headers can lie). Everything is extracted into a temporary folder
inside the workspace and moved into place only when the whole upload passed, so a
refused upload leaves nothing behind.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from studio.data.images import IMAGE_EXTENSIONS
from studio.errors import StudioError

CAPTION_EXTENSIONS = frozenset({".txt", ".caption"})
METADATA_FILES = frozenset({"metadata.jsonl", "metadata.csv"})
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadLimits:
    """Caps on one upload (all files of it together, zips counted inflated)."""

    max_bytes: int = 1 << 30  # 1 GiB
    max_files: int = 2000
    max_ratio: float = 200.0  # inflated / compressed, per entry; real images compress ~1-3x


@dataclass
class UploadResult:
    folder: Path
    written: list[Path]
    skipped: list[str]  # "name: reason" for files that are not dataset files


def _dataset_file(name: str) -> bool:
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in CAPTION_EXTENSIONS or path.name.lower() in METADATA_FILES


class _Budget:
    def __init__(self, limits: UploadLimits, source: str):
        self.limits, self.source = limits, source
        self.bytes = self.files = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise StudioError(
                f"too many files: more than {self.limits.max_files} in one upload (at {name!r})",
                path=self.source,
                hint="upload fewer files, or start the app with a higher --max-files",
            )

    def add_bytes(self, n: int, name: str) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_bytes:
            raise StudioError(
                f"upload too large: more than {self.limits.max_bytes // (1 << 20)} MiB (at {name!r})",
                path=self.source,
                hint="upload a smaller dataset, or start the app with a higher --max-upload-mb",
            )


def _member_path(info: zipfile.ZipInfo, source: str) -> PurePosixPath | None:
    """The entry's safe relative path, None for folders and junk; refuses hostile entries."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise StudioError(f"refusing a zip that contains a symlink ({info.filename!r})", path=source)
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or name.startswith("/"):
        raise StudioError(f"refusing a zip with an absolute path ({info.filename!r})", path=source)
    if ".." in path.parts:
        raise StudioError(f"refusing a zip with a '..' path ({info.filename!r})", path=source)
    if info.is_dir() or any(part in name for part in _JUNK) or not path.parts:
        return None
    if any(part.startswith(".") for part in path.parts):
        return None  # hidden files: never dataset content
    return path


def _extract_zip(archive: Path, dest: Path, budget: _Budget, written: list[Path], skipped: list[str]) -> None:
    source = archive.name
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for info in zf.infolist():
                rel = _member_path(info, source)
                if rel is None:
                    continue
                if not _dataset_file(rel.name):
                    skipped.append(f"{info.filename}: not an image or caption file")
                    continue
                budget.add_file(info.filename)
                if (
                    info.compress_size
                    and info.file_size / info.compress_size > budget.limits.max_ratio
                    and info.file_size > _CHUNK
                ):
                    raise StudioError(
                        f"refusing a zip bomb: {info.filename!r} inflates {info.file_size / info.compress_size:.0f}x",
                        path=source,
                    )
                members.append((info, rel))
            for info, rel in members:
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    inflated = 0
                    while block := src.read(_CHUNK):
                        inflated += len(block)
                        budget.add_bytes(len(block), info.filename)
                        if inflated > info.file_size:  # the header lied about the size
                            raise StudioError(
                                f"corrupt zip entry {info.filename!r} (size mismatch)", path=source
                            )
                        out.write(block)
                written.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise StudioError(f"not a readable zip file ({exc})", path=source) from None
    except FileExistsError as exc:
        raise StudioError(
            f"the zip holds the same file twice ({Path(exc.filename).name})", path=source
        ) from None


def import_uploads(files: list[str | Path], dest: Path, staging: Path, limits: UploadLimits) -> UploadResult:
    """Copy uploaded images/captions and extract uploaded zips into ``dest`` (created, must not exist)."""
    if dest.exists():
        raise StudioError("a dataset with this name already exists", path=dest, hint="pick another name")
    if not files:
        raise StudioError("no files uploaded", hint="drop images (and .txt captions) or a zip")
    staging.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=staging))
    budget = _Budget(limits, "upload")
    written: list[Path] = []
    skipped: list[str] = []
    try:
        for item in files:
            path = Path(item)
            if path.suffix.lower() == ".zip":
                _extract_zip(path, tmp, budget, written, skipped)
                continue
            name = path.name
            if not _dataset_file(name) or name.startswith("."):
                skipped.append(f"{name}: not an image or caption file")
                continue
            budget.add_file(name)
            budget.add_bytes(path.stat().st_size, name)
            target = tmp / name
            if target.exists():
                raise StudioError(f"two uploaded files are both named {name!r}", path=name)
            shutil.copyfile(path, target)
            written.append(target)
        if not written:
            raise StudioError(
                "the upload holds no image or caption files",
                hint=f"allowed: {', '.join(sorted(IMAGE_EXTENSIONS | CAPTION_EXTENSIONS))}, metadata.jsonl/csv",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
        return UploadResult(dest, [dest / p.relative_to(tmp) for p in written], skipped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
