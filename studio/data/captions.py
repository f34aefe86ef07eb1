"""Find the caption of an image and put the trigger word in it.

Precedence: a sidecar ``<stem>.txt``, then ``<stem>.caption`` (kohya's default; the GUI
writes ``.txt``, so both are common), then a ``metadata.jsonl`` / ``metadata.csv`` row in
the image's folder or any parent up to the dataset root. Empty files count as missing,
so an empty ``.txt`` does not hide a real ``.caption``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from studio.data.files import FileProblem, is_inside
from studio.errors import DatasetError

CAPTION_EXTENSIONS = (".txt", ".caption")
_OUTSIDE = "symlink to a file outside the dataset folder: ignored"
METADATA_FILES = ("metadata.csv", "metadata.jsonl")  # later files win on the same file_name


@dataclass(frozen=True)
class Caption:
    text: str
    source: str  # ".txt", ".caption", "metadata.jsonl", "metadata.csv"; "" when none was found


def read_text_file(path: Path) -> tuple[str, FileProblem | None]:
    """Read a caption file as UTF-8 (BOM stripped), falling back to Latin-1 with a note."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path.name} ({exc.strerror or exc})", path=path) from None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        note = FileProblem(path, "not valid UTF-8; read as Latin-1 (save it as UTF-8 to be sure)")
        return data.decode("latin-1"), note


def normalize(text: str) -> str:
    """Collapse all whitespace, newlines included: kohya reads only the first line, which
    silently drops the rest of a multi-line caption."""
    return " ".join(text.split())


def read_sidecar(image: Path, real_root: Path) -> tuple[Caption | None, list[FileProblem]]:
    """The first non-empty sidecar caption of ``image``, in ``CAPTION_EXTENSIONS`` order."""
    notes: list[FileProblem] = []
    for extension in CAPTION_EXTENSIONS:
        candidate = image.with_suffix(extension)
        if not candidate.is_file():
            continue
        if not is_inside(candidate, real_root):
            notes.append(FileProblem(candidate, _OUTSIDE))
            continue
        raw, note = read_text_file(candidate)
        notes += [note] if note else []
        text = normalize(raw)
        if text:
            return Caption(text, extension), notes
    return None, notes


class MetadataCaptions:
    """Captions from ``metadata.jsonl``/``metadata.csv`` files, loaded once per folder.

    ``file_name`` is relative to the metadata file's folder (the Hugging Face imagefolder
    convention), so a root-level file can caption images in sub-folders.
    """

    def __init__(self, root: Path, real_root: Path):
        self.root = root
        self.real_root = real_root
        self.notes: list[FileProblem] = []
        self._tables: dict[Path, dict[str, Caption]] = {}

    def lookup(self, image: Path) -> Caption | None:
        """The row for ``image`` in the nearest metadata file, from its folder up to the root."""
        folder = image.parent
        while True:
            caption = self._table(folder).get(image.relative_to(folder).as_posix())
            if caption is not None or folder == self.root or folder == folder.parent:
                return caption
            folder = folder.parent

    def _table(self, folder: Path) -> dict[str, Caption]:
        if folder not in self._tables:
            table: dict[str, Caption] = {}
            for name in METADATA_FILES:
                if not (folder / name).is_file():
                    continue
                if is_inside(folder / name, self.real_root):
                    table.update(self._read(folder / name))
                else:
                    self.notes.append(FileProblem(folder / name, _OUTSIDE))
            self._tables[folder] = table
        return self._tables[folder]

    def _read(self, path: Path) -> dict[str, Caption]:
        raw, note = read_text_file(path)
        self.notes += [note] if note else []
        rows = (
            _jsonl_rows(path, raw, self.notes)
            if path.suffix == ".jsonl"
            else _csv_rows(path, raw, self.notes)
        )
        table = {}
        for file_name, text in rows:
            key = PurePosixPath(file_name.replace("\\", "/")).as_posix()
            if normalize(text):
                table[key] = Caption(normalize(text), path.name)
        return table


def _jsonl_rows(path: Path, raw: str, notes: list[FileProblem]) -> list[tuple[str, str]]:
    rows, bad = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if (
            isinstance(row, dict)
            and isinstance(row.get("file_name"), str)
            and isinstance(row.get("text"), str)
        ):
            rows.append((row["file_name"], row["text"]))
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        notes.append(
            FileProblem(
                path,
                f"ignored {len(bad)} line(s) that are not JSON objects with 'file_name' and 'text': {shown}",
            )
        )
    return rows


def _csv_rows(path: Path, raw: str, notes: list[FileProblem]) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(raw))
    try:
        columns = reader.fieldnames or []
        if "file_name" not in columns or "text" not in columns:
            found = ", ".join(columns) or "none"
            notes.append(FileProblem(path, f"needs 'file_name' and 'text' columns (found: {found}); ignored"))
            return []
        return [(row["file_name"], row["text"] or "") for row in reader if row["file_name"]]
    except csv.Error as exc:
        notes.append(FileProblem(path, f"not valid CSV ({exc}); ignored"))
        return []


def has_word(text: str, word: str) -> bool:
    """Whole-word, case-insensitive: ``"mystyle"`` is in ``"a MyStyle photo"`` but not in ``"mystyles"``."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def with_trigger(caption: str, trigger: str | None) -> str:
    """Prepend ``trigger`` as the first comma tag, unless the caption already contains it."""
    if not trigger or has_word(caption, trigger):
        return caption
    return f"{trigger}, {caption}" if caption else trigger
