"""Caption a folder: sidecar ``.txt`` files, written atomically, existing captions kept unless asked."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from studio import atomic
from studio.captioning.base import Captioner, batches
from studio.data.captions import CAPTION_EXTENSIONS, normalize
from studio.data.files import FileProblem, is_inside
from studio.data.images import IMAGE_EXTENSIONS, load_rgb
from studio.errors import DatasetError, StudioError


@dataclass
class CaptionReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already had a caption
    failed: list[FileProblem] = field(default_factory=list)

    def summary(self, name: str) -> str:
        parts = [f"captioned {len(self.written)} image(s) with {name}"]
        parts.append(f"kept {len(self.kept)} existing caption(s)")
        parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts)


def find_images(root: Path) -> list[Path]:
    """Images under ``root`` (sub-folders too, hidden ones and links out of ``root`` skipped), sorted."""
    if not root.is_dir():
        raise StudioError("not a folder", path=root, hint="give the folder of images to caption")
    real_root = Path(os.path.realpath(root))
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if (
                not name.startswith(".")
                and path.suffix.lower() in IMAGE_EXTENSIONS
                and is_inside(path, real_root)
            ):
                found.append(path)
    return found


def has_caption(image: Path) -> bool:
    """A non-empty ``.txt`` or ``.caption`` sidecar, the files training reads first."""
    for extension in CAPTION_EXTENSIONS:
        sidecar = image.with_suffix(extension)
        try:
            if sidecar.is_file() and sidecar.read_bytes().strip():
                return True
        except OSError:
            return True  # unreadable: not ours to replace
    return False


def with_prefix(text: str, prefix: str | None) -> str:
    """``"TRIGGER, caption"``; a caption that already starts with the trigger is left as it is."""
    text = normalize(text)
    if not prefix or text == prefix or text.startswith(f"{prefix},") or text.startswith(f"{prefix} "):
        return text
    return f"{prefix}, {text}" if text else prefix


def caption_folder(
    root: Path,
    captioner: Captioner,
    *,
    prefix: str | None = None,
    overwrite: bool = False,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> CaptionReport:
    """Caption every image of ``root`` that has no caption (every image with ``overwrite``)."""
    report = CaptionReport()
    todo = []
    for image in find_images(root):
        (todo.append if overwrite or not has_caption(image) else report.kept.append)(image)
    with tqdm(total=len(todo), unit="image", desc="captioning", leave=False) as bar:
        for chunk in batches(todo, batch_size):
            loaded: list[tuple[Path, Image.Image]] = []
            for path in chunk:
                try:
                    loaded.append((path, load_rgb(path)[0]))
                except DatasetError as exc:
                    report.failed.append(FileProblem(path, exc.message))
            texts = captioner.caption([image for _, image in loaded]) if loaded else []
            for (path, _), text in zip(loaded, texts, strict=True):
                if not normalize(text):
                    report.failed.append(FileProblem(path, "the captioner returned an empty caption"))
                    continue
                atomic.write_text(path.with_suffix(".txt"), with_prefix(text, prefix) + "\n")
                report.written.append(path)
            bar.update(len(chunk))
            if on_progress:
                on_progress(bar.n, len(todo))
    return report
