"""``studio dataset check``: everything worth knowing about a dataset before spending GPU time.

``check_dataset`` returns a plain dataclass (the app can render it its own way);
``DatasetReport.format`` is the terminal rendering the CLI prints.
"""

from __future__ import annotations

import hashlib
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.data.buckets import Bucket
from studio.data.dataset import DatasetConfig, ImageItem, scan_dataset
from studio.data.files import FileProblem
from studio.data.similar import dhash, near_duplicate_groups

CLIP_TOKEN_LIMIT = 77
_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Spread:
    low: int
    median: float
    high: int

    @classmethod
    def of(cls, values: list[int]) -> Spread | None:
        return cls(min(values), statistics.median(values), max(values)) if values else None


@dataclass(frozen=True)
class FolderRow:
    name: str
    images: int
    repeats: int


@dataclass(frozen=True)
class BucketRow:
    bucket: Bucket
    images: int
    samples: int


@dataclass
class DatasetReport:
    root: Path
    config: DatasetConfig
    images_found: int
    usable: int
    samples: int  # per epoch, repeats included
    folders: list[FolderRow]
    widths: Spread | None
    heights: Spread | None
    buckets: list[BucketRow]
    possible_buckets: int
    caption_words: Spread | None
    caption_tokens: Spread | None
    tokens_exact: bool  # False: approximated without a tokenizer
    token_limit: int
    token_overflow: list[tuple[Path, int]]
    missing_captions: list[Path]
    duplicates: list[list[Path]]  # groups of byte-identical files
    near_duplicates: list[list[Path]]  # groups of perceptually similar (not identical) images
    upscaled: list[tuple[Path, int, int, Bucket]]  # smaller than their bucket: training upscales them
    without_trigger: list[Path]  # captioned, but the caption never mentions the trigger
    problems: list[FileProblem]
    notes: list[FileProblem]

    @property
    def skipped(self) -> int:
        return self.images_found - self.usable

    def format(self) -> str:
        trigger = f', trigger "{self.config.trigger}"' if self.config.trigger else ""
        settings = f"resolution {self.config.resolution}, bucket step {self.config.bucket_step}{trigger}"
        sections = [
            [f"Dataset {self.root}  ({settings})"],
            [
                "Images",
                *_table([["found", self.images_found], ["usable", self.usable], ["skipped", self.skipped]]),
                f"  samples per epoch: {self.samples} (with folder repeats)",
            ],
            self._format_folders_sizes_buckets(),
            self._format_captions(),
            [self._missing_title()] + [f"  {self._rel(path)}" for path in self.missing_captions],
            [f"Duplicates (identical bytes): {len(self.duplicates) or 'none'}"]
            + [f"  {' = '.join(self._rel(path) for path in group)}" for group in self.duplicates],
            [f"Near-duplicates (perceptual hash): {len(self.near_duplicates) or 'none'}"]
            + [f"  {' ~ '.join(self._rel(path) for path in group)}" for group in self.near_duplicates],
            self._format_upscaled(),
            self._format_trigger(),
            [f"Problems: {len(self.problems) or 'none'}"]
            + _table([[self._rel(p.path), p.reason] for p in self.problems], align_right=False),
        ]
        if self.notes:
            sections.append(
                [
                    f"Notes: {len(self.notes)}",
                    *_table([[self._rel(n.path), n.reason] for n in self.notes], align_right=False),
                ]
            )
        return "\n\n".join("\n".join(section) for section in sections if section)

    def _format_upscaled(self) -> list[str]:
        if not self.upscaled:
            return [f"Below the training resolution: none (resolution {self.config.resolution})"]
        rows = [[self._rel(p), f"{w}x{h} -> {bucket}"] for p, w, h, bucket in self.upscaled]
        title = f"Below the training resolution: {len(self.upscaled)} (upscaled, so they train blurry)"
        return [title, *_table(rows, align_right=False)]

    def _format_trigger(self) -> list[str]:
        if not self.config.trigger:
            return []
        count = len(self.without_trigger)
        if not count:
            return [f'Captions without the trigger "{self.config.trigger}": none']
        return [
            f'Captions without the trigger "{self.config.trigger}": {count} of {self.usable} '
            "(it is put first in those during training)"
        ]

    def _missing_title(self) -> str:
        if not self.missing_captions:
            return "Missing captions: none"
        return f"Missing captions: {len(self.missing_captions)} (they use the folder's class name or the trigger)"

    def _format_folders_sizes_buckets(self) -> list[str]:
        if not self.widths or not self.heights:
            return []
        folders = [[f.name, f.images, f.repeats, f.images * f.repeats] for f in self.folders]
        sizes = [["width", *_spread(self.widths)], ["height", *_spread(self.heights)]]
        buckets = [
            [str(b.bucket), f"{b.bucket.width / b.bucket.height:.2f}", b.images, b.samples]
            for b in self.buckets
        ]
        return [
            *_table(folders, header=["Folders", "images", "repeats", "samples"]),
            "",
            *_table(sizes, header=["Sizes (px)", "min", "median", "max"]),
            "",
            *_table(
                buckets,
                header=[
                    f"Buckets ({len(self.buckets)} of {self.possible_buckets} used)",
                    "w/h",
                    "images",
                    "samples",
                ],
            ),
        ]

    def _format_captions(self) -> list[str]:
        if not self.caption_words or not self.caption_tokens:
            return ["Captions: none"]
        tokens = "tokens" if self.tokens_exact else "tokens (approx.)"
        rows = [["words", *_spread(self.caption_words)], [tokens, *_spread(self.caption_tokens)]]
        lines = _table(rows, header=["Captions", "min", "median", "max"])
        if not self.tokens_exact:
            lines.append(
                "  approximate: words + punctuation + start/end; CLIP often splits words further (--tokenizer DIR)"
            )
        lines.append(
            f"  over {self.token_limit} tokens (the rest is cut off): {len(self.token_overflow) or 'none'}"
        )
        lines += _table([[f"  {self._rel(path)}", f"{count} tokens"] for path, count in self.token_overflow])
        return lines

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def check_dataset(
    config: DatasetConfig, tokenizer: Any = None, token_limit: int = CLIP_TOKEN_LIMIT
) -> DatasetReport:
    """Scan ``config.root`` (never raising for zero usable images) and summarise it.

    ``tokenizer`` is any Hugging Face tokenizer; without one, token counts are estimated.
    """
    dataset = scan_dataset(config, allow_empty=True)
    items = dataset.items
    token_counts = [_count_tokens(item.caption, tokenizer) for item in items]
    folder_images = Counter(item.folder for item in items)
    folder_repeats = {item.folder: item.repeats for item in items}
    loose = {item.folder for item in items if item.path.parent == dataset.root}
    bucket_images = Counter(item.bucket for item in items)
    bucket_samples: Counter[Bucket] = Counter()
    for item in items:
        bucket_samples[item.bucket] += item.repeats
    return DatasetReport(
        root=dataset.root,
        config=config,
        images_found=dataset.images_found,
        usable=len(items),
        samples=sum(item.repeats for item in items),
        folders=[
            FolderRow(f"{name} (top level)" if name in loose else name, count, folder_repeats[name])
            for name, count in folder_images.items()
        ],
        widths=Spread.of([item.width for item in items]),
        heights=Spread.of([item.height for item in items]),
        buckets=[BucketRow(b, bucket_images[b], bucket_samples[b]) for b in sorted(bucket_images)],
        possible_buckets=len(dataset.buckets),
        caption_words=Spread.of([len(item.caption.split()) for item in items]),
        caption_tokens=Spread.of(token_counts),
        tokens_exact=tokenizer is not None,
        token_limit=token_limit,
        token_overflow=[
            (item.path, n) for item, n in zip(items, token_counts, strict=True) if n > token_limit
        ],
        missing_captions=dataset.missing_captions,
        duplicates=(duplicates := _duplicates([item.path for item in items])),
        near_duplicates=_near_duplicates(items, duplicates),
        upscaled=[
            (item.path, item.width, item.height, item.bucket)
            for item in items
            if item.width < item.bucket.width or item.height < item.bucket.height
        ],
        without_trigger=[item.path for item in items if item.caption_source and item.trigger_added],
        problems=dataset.problems,
        notes=dataset.notes,
    )


def _count_tokens(caption: str, tokenizer: Any) -> int:
    """Tokens including CLIP's start and end tokens, so the count compares directly with 77."""
    if tokenizer is None:
        return len(_APPROX_TOKEN.findall(caption)) + 2
    return len(tokenizer(caption, truncation=False, verbose=False)["input_ids"])


def _duplicates(paths: list[Path]) -> list[list[Path]]:
    """Groups of byte-identical files; only files sharing a size are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in paths:
        by_size[path.stat().st_size].append(path)
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for same_size in by_size.values():
        if len(same_size) > 1:
            for path in same_size:
                by_hash[_sha256(path)].append(path)
    return [group for group in by_hash.values() if len(group) > 1]


def _near_duplicates(items: list[ImageItem], identical: list[list[Path]]) -> list[list[Path]]:
    """Perceptual near-duplicates, one representative per byte-identical group."""
    copies = {path for group in identical for path in group[1:]}
    paths = [item.path for item in items if item.path not in copies]
    return near_duplicate_groups(paths, [dhash(path) for path in paths])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _spread(spread: Spread) -> list[str]:
    return [str(spread.low), f"{spread.median:g}", str(spread.high)]


def _table(rows: list[list[Any]], header: list[str] | None = None, align_right: bool = True) -> list[str]:
    """Aligned columns: rows indented under an optional header; first column left-aligned,
    the others right-aligned (numbers) or left-aligned (text such as reasons)."""
    table = ([header] if header else []) + [[f"  {row[0]}", *map(str, row[1:])] for row in rows]
    if not table:
        return []
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        rest = [
            cell.rjust(w) if align_right else cell.ljust(w)
            for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join([row[0].ljust(widths[0]), *rest]).rstrip())
    return lines
