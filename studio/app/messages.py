"""Messages name files the way the user knows them, never by the server's absolute paths.

A file inside the workspace is shown relative to it (``datasets/shapes/a.png``); a file
the browser uploaded (Gradio keeps it as ``<workspace>/uploads/.gradio/<hash>/<name>``)
is shown by its original name (``box_01.png``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def shown_paths(text: str, root: str | Path) -> str:
    """``text`` with every path under the workspace ``root`` rewritten as the user knows it."""
    roots = {str(Path(root)), os.path.realpath(root)}
    for prefix in sorted(roots, key=len, reverse=True):
        escaped = re.escape(prefix.rstrip("/"))
        text = re.sub(escaped + r"/uploads/\.gradio/[^/\s]+/", "", text)  # an upload: its own name
        text = re.sub(escaped + r"/(?=[^\s/])", "", text)  # inside the workspace: relative to it
    return text


def shown_path(path: str | Path, root: str | Path) -> str:
    """One path, as :func:`shown_paths` shows it."""
    return shown_paths(str(path), root)
