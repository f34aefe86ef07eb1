"""What the scan may read, and how it reports a file it will not use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileProblem:
    """A file or folder and, in plain words, what is wrong with it."""

    path: Path
    reason: str


def is_inside(path: Path, real_root: Path) -> bool:
    """Whether ``path``, symlinks resolved, stays inside ``real_root`` (itself resolved).

    A dataset may be shared or uploaded: a link to ``~/.ssh`` must not end up read,
    trained on, or copied into an adapter's metadata.
    """
    target = Path(os.path.realpath(path))
    return target == real_root or real_root in target.parents
