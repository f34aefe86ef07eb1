"""The workspace: one folder that holds everything the app reads or writes.

Every path the UI hands to the studio goes through ``Workspace.resolve``, so nothing a
browser sends (a typed folder, a caption-table file name, a recipe's adapter path) can
make the app read, list or write outside it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError

_SUBDIRS = ("datasets", "adapters", "jobs", "samples", "models", "recipes", "uploads")
_SAFE_NAME = re.compile(r"[^\w.-]+")


def safe_name(text: str, fallback: str = "untitled") -> str:
    """A file-system-safe single path component: word characters, dots and dashes only."""
    name = _SAFE_NAME.sub("_", text.strip()).strip("._-")[:64]
    return name or fallback


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | Path) -> Workspace:
        path = Path(os.path.realpath(Path(root).expanduser()))
        if path.exists() and not path.is_dir():
            raise StudioError("the workspace must be a folder", path=path, hint="pass --workspace DIR")
        for sub in _SUBDIRS:
            (path / sub).mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def db_path(self) -> Path:
        return self.root / "studio.db"

    def contains(self, path: str | Path) -> bool:
        real = Path(os.path.realpath(path))
        return real == self.root or self.root in real.parents

    def resolve(self, path: str | Path, *, must_exist: bool = True) -> Path:
        """``path`` (absolute, or relative to the workspace) with symlinks resolved, if inside."""
        candidate = Path(path).expanduser()
        if not candidate.is_absolute():
            candidate = self.root / candidate
        real = Path(os.path.realpath(candidate))
        if not self.contains(real):
            raise StudioError(
                "outside the workspace: the app only reads and writes files under " + str(self.root),
                path=path,
                hint="copy the files into the workspace first",
            )
        if must_exist and not real.exists():
            raise StudioError("not found in the workspace", path=path)
        return real

    def relative(self, path: str | Path) -> str:
        return Path(os.path.realpath(path)).relative_to(self.root).as_posix()

    def unique(self, folder: Path, name: str, suffix: str = "") -> Path:
        """``folder/name<suffix>``, or ``name-2``, ``name-3``... if taken."""
        target, n = folder / f"{name}{suffix}", 1
        while target.exists():
            n += 1
            target = folder / f"{name}-{n}{suffix}"
        return target
