"""Scan a kohya-style dataset folder into a list of checked, captioned, bucketed images.

Layout: images directly in the root repeat once and fall back to the trigger as caption;
``N_name`` sub-folders (``10_mystyle style``) repeat N times and fall back to ``name``;
``0_name`` folders are skipped; other sub-folders repeat once and their name is *not* a
caption (it is usually just an organising name). Sub-folders are scanned recursively.
Every image is decoded once here, so a broken file is reported now, not mid-training.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from studio.data.buckets import Bucket, make_buckets, nearest_bucket
from studio.data.captions import CAPTION_EXTENSIONS, MetadataCaptions, has_word, read_sidecar, with_trigger
from studio.data.files import FileProblem, is_inside
from studio.data.images import IMAGE_EXTENSIONS, probe_image
from studio.data.masks import MASKS_FOLDER
from studio.errors import DatasetError, StudioError

_REPEATS_PREFIX = re.compile(r"^(\d+)_(.*)$")
_LISTED_FILES = 20  # how many file names one warning lists before "... and N more"


@dataclass
class DatasetConfig:
    """Where the images are and how they become training samples."""

    root: Path
    trigger: str | None = None
    resolution: int = 512
    bucket_step: int = 64
    min_bucket: int | None = None  # default resolution // 2
    max_bucket: int | None = None  # default resolution * 2
    random_crop: bool = False
    shuffle_tags: bool = False
    keep_tokens: int = 0  # with shuffle_tags: this many leading tags stay in place
    caption_dropout: float = 0.0  # probability that a sample trains with an empty caption

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.trigger = (self.trigger or "").strip() or None
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise StudioError(f"caption dropout {self.caption_dropout} must be between 0 and 1")
        if self.keep_tokens < 0:
            raise StudioError(f"keep_tokens {self.keep_tokens} must be 0 or more")

    def buckets(self) -> list[Bucket]:
        return make_buckets(self.resolution, self.bucket_step, self.min_bucket, self.max_bucket)


@dataclass(frozen=True)
class ImageItem:
    """One usable image. ``width``/``height`` are as displayed (EXIF orientation applied)."""

    path: Path
    caption: str  # final caption, trigger included; augmentation happens per sample
    repeats: int
    folder: str  # first-level folder name (root name for loose images): kohya's tag-frequency key
    width: int
    height: int
    bucket: Bucket
    caption_source: str  # ".txt", ".caption", "metadata.jsonl", "metadata.csv"; "" = fallback
    trigger_added: bool = False  # the caption did not mention the trigger, so it was prepended
    is_reg: bool = False  # a regularisation (prior) image from --reg-dir


@dataclass
class ScannedDataset:
    root: Path
    buckets: list[Bucket]
    items: list[ImageItem] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)  # files and folders skipped
    notes: list[FileProblem] = field(default_factory=list)  # kept, but worth knowing
    reg_scanned: list[ImageItem] = field(default_factory=list)  # --reg-dir as scanned (folder repeats)

    @property
    def images_found(self) -> int:
        """Files with an image extension, usable or not."""
        return len(self.items) + sum(_is_image(problem.path) for problem in self.problems)

    @property
    def missing_captions(self) -> list[Path]:
        return [item.path for item in self.items if not item.caption_source]

    @property
    def warnings(self) -> list[str]:
        """Dataset-wide messages for a training log; ``studio dataset check`` shows the details."""
        out = []
        skipped = [f"{self._relative(p.path)} ({p.reason})" for p in self.problems]
        if skipped:
            out.append(f"skipped {len(skipped)} file(s) or folder(s): {_listing(skipped)}")
        missing = [self._relative(path) for path in self.missing_captions]
        if missing:
            out.append(
                f"{len(missing)} image(s) have no caption (.txt, .caption or metadata row), so they use the "
                f"folder's class name or the trigger (an empty caption if neither is set): {_listing(missing)}"
            )
        return out

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)


def _listing(names: list[str]) -> str:
    more = f" ... and {len(names) - _LISTED_FILES} more" if len(names) > _LISTED_FILES else ""
    return ", ".join(names[:_LISTED_FILES]) + more


@dataclass(frozen=True)
class _Folder:
    label: str
    repeats: int
    class_caption: str | None


def scan_dataset(config: DatasetConfig, *, allow_empty: bool = False) -> ScannedDataset:
    """Check every image under ``config.root``; bad files become ``problems``, not exceptions.

    Raises ``DatasetError`` if the folder is missing, or has no usable image (unless
    ``allow_empty``, which ``studio dataset check`` uses to report on it instead).
    """
    root = config.root
    if not root.is_dir():
        raise DatasetError(
            "dataset folder not found" if not root.exists() else "not a folder",
            path=root,
            hint="give the folder that holds the images or the N_name sub-folders",
        )
    dataset = ScannedDataset(root=root, buckets=config.buckets())
    real_root = Path(os.path.realpath(root))
    walker = _Walker(real_root, dataset.problems)
    metadata = MetadataCaptions(root, real_root)
    for folder, images in _folders(root, walker, dataset):
        for path in images:
            try:
                dataset.items.append(_make_item(path, folder, config, dataset, metadata))
            except DatasetError as exc:
                dataset.problems.append(FileProblem(path, exc.message))
    dataset.notes += metadata.notes + _orphan_captions(walker.files)
    if not dataset.items and not allow_empty:
        raise DatasetError("no usable images", path=root, hint=_empty_hint(dataset))
    return dataset


def _folders(
    root: Path, walker: _Walker, dataset: ScannedDataset
) -> Iterator[tuple[_Folder, Iterator[Path]]]:
    """The root's loose images, then each first-level sub-folder with its kohya meaning."""
    subfolders, files = walker.entries(root)
    yield _Folder(root.name, 1, None), (path for path in files if _is_image(path))
    for path in subfolders:
        if path.name == MASKS_FOLDER:  # --masked-loss masks, never training images
            continue
        match = _REPEATS_PREFIX.match(path.name)
        if match is None:
            dataset.notes.append(
                FileProblem(
                    path, "no N_ repeat prefix: its images repeat once and the folder name is not a caption"
                )
            )
            yield _Folder(path.name, 1, None), walker.images(path)
        elif int(match[1]) == 0:
            dataset.problems.append(FileProblem(path, "repeat count 0 in the folder name: folder skipped"))
        else:
            yield _Folder(path.name, int(match[1]), match[2].strip() or None), walker.images(path)


def _orphan_captions(files: list[Path]) -> list[FileProblem]:
    """Caption files with no image of the same stem: usually a renamed or deleted image."""
    stems = {path.with_suffix("") for path in files if _is_image(path)}
    return [
        FileProblem(path, "caption file with no image of the same name: ignored")
        for path in files
        if path.suffix.lower() in CAPTION_EXTENSIONS and path.with_suffix("") not in stems
    ]


def _make_item(
    path: Path, folder: _Folder, config: DatasetConfig, dataset: ScannedDataset, metadata: MetadataCaptions
) -> ImageItem:
    info = probe_image(path)
    caption, caption_notes = read_sidecar(path, metadata.real_root)
    caption = caption or metadata.lookup(path)
    dataset.notes += caption_notes
    if info.frames > 1:
        dataset.notes.append(FileProblem(path, f"animated ({info.frames} frames): using the first frame"))
    text = caption.text if caption else (folder.class_caption or "")
    return ImageItem(
        path=path,
        caption=with_trigger(text, config.trigger),
        repeats=folder.repeats,
        folder=folder.label,
        width=info.width,
        height=info.height,
        bucket=nearest_bucket(info.width, info.height, dataset.buckets),
        caption_source=caption.source if caption else "",
        trigger_added=bool(config.trigger) and not has_word(text, config.trigger),
    )


class _Walker:
    """Lists folders in name order, skipping hidden entries and symlinks that leave the root."""

    def __init__(self, real_root: Path, problems: list[FileProblem]):
        self.real_root = real_root
        self.problems = problems
        self.visited: set[str] = set()
        self.files: list[Path] = []  # every regular file listed, for dataset-wide checks

    def entries(self, directory: Path) -> tuple[list[Path], list[Path]]:
        self.visited.add(os.path.realpath(directory))
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            self.problems.append(FileProblem(directory, f"cannot list folder ({exc.strerror})"))
            return [], []
        folders, files = [], []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or (entry.is_symlink() and not self._symlink_ok(path)):
                continue
            if entry.is_dir():
                folders.append(path)
            elif entry.is_file():
                files.append(path)
        self.files += files
        return folders, files

    def images(self, directory: Path) -> Iterator[Path]:
        """Image files under ``directory``, recursively; each real folder is read once."""
        if os.path.realpath(directory) in self.visited:
            self.problems.append(
                FileProblem(directory, "already scanned through another path (symlink loop?)")
            )
            return
        folders, files = self.entries(directory)
        yield from (path for path in files if _is_image(path))
        for folder in folders:
            yield from self.images(folder)

    def _symlink_ok(self, path: Path) -> bool:
        if not path.exists():
            reason = "broken symlink"
        elif not is_inside(path, self.real_root):
            reason = f"symlink to {os.path.realpath(path)}, outside the dataset folder: skipped (copy it in instead)"
        else:
            return True
        if _is_image(path) or path.is_dir():
            self.problems.append(FileProblem(path, reason))
        return False


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _empty_hint(dataset: ScannedDataset) -> str:
    if dataset.images_found:
        return f"all {dataset.images_found} image file(s) were skipped; run `studio dataset check {dataset.root}` to see why"
    return "add .png/.jpg/.jpeg/.webp/.bmp images, loose or in N_name sub-folders such as 10_mystyle"
