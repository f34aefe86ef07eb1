"""Dataset summaries in the shapes kohya writes to ``ss_*`` metadata.

A1111 builds its "training dataset tags" panel from ``ss_tag_frequency`` and shows
``ss_dataset_dirs`` and ``ss_bucket_info``; the exporter JSON-encodes these dicts.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from studio.data.dataset import ImageItem


def tag_frequency(items: list[ImageItem]) -> dict[str, dict[str, int]]:
    """``{folder: {tag: count}}``; tags are comma-split, stripped, lower-cased, counted once per occurrence."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in items:
        counts[item.folder].update(tag.strip().lower() for tag in item.caption.split(",") if tag.strip())
    return {folder: dict(counter) for folder, counter in counts.items()}


def dataset_dirs(items: list[ImageItem]) -> dict[str, dict[str, int]]:
    """``{folder: {"n_repeats": n, "img_count": n}}`` (``ss_dataset_dirs``)."""
    dirs: dict[str, dict[str, int]] = {}
    for item in items:
        entry = dirs.setdefault(item.folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    return dirs


def bucket_info(items: list[ImageItem]) -> dict:
    """``{"buckets": {i: {"resolution": [w, h], "count": samples}}, "mean_img_ar_error": x}``
    (``ss_bucket_info``); counts include repeats, as kohya's do."""
    counts: Counter = Counter()
    for item in items:
        counts[item.bucket] += item.repeats
    errors = [abs(item.bucket.width / item.bucket.height - item.width / item.height) for item in items]
    return {
        "buckets": {
            index: {"resolution": [bucket.width, bucket.height], "count": counts[bucket]}
            for index, bucket in enumerate(sorted(counts))
        },
        "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0,
    }
