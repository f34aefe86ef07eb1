"""What a training step needs from a scanned dataset: batches, pixels and captions.

All randomness comes from a seed or a ``random.Random`` the trainer passes in, so a run
(and a resumed run) sees exactly the same batches, crops and captions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from studio.data.buckets import Bucket, resize_and_crop
from studio.data.dataset import DatasetConfig, ImageItem
from studio.data.images import load_rgb
from studio.errors import StudioError

if TYPE_CHECKING:
    import torch


def expand_samples(items: list[ImageItem]) -> list[int]:
    """One entry per (image, repeat) occurrence: the item index, repeated ``item.repeats`` times."""
    return [index for index, item in enumerate(items) for _ in range(item.repeats)]


def epoch_batches(items: list[ImageItem], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of sample indices (into ``expand_samples(items)``).

    Every sample appears exactly once; a batch never mixes buckets, so its images stack
    into one tensor; a bucket's last batch may be smaller. The order depends only on
    ``(seed, epoch)``, so resuming at an epoch replays it exactly.
    """
    if batch_size < 1:
        raise StudioError(f"batch size {batch_size} must be at least 1")
    rng = random.Random(f"studio-epoch:{seed}:{epoch}")
    by_bucket: dict[Bucket, list[int]] = defaultdict(list)
    for sample, index in enumerate(expand_samples(items)):
        by_bucket[items[index].bucket].append(sample)
    batches = []
    for bucket in sorted(by_bucket):
        samples = by_bucket[bucket]
        rng.shuffle(samples)
        batches += [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]
    rng.shuffle(batches)
    return batches


def shuffle_tags(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """Shuffle comma-separated tags, keeping the first ``keep_tokens`` (the trigger is the first)."""
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)


def caption_for_sample(item: ImageItem, config: DatasetConfig, rng: random.Random) -> str:
    """The caption one sample trains with: dropped to ``""`` with ``caption_dropout``, else
    tag-shuffled when ``shuffle_tags`` is on."""
    if config.caption_dropout and rng.random() < config.caption_dropout:
        return ""
    if config.shuffle_tags:
        return shuffle_tags(item.caption, config.keep_tokens, rng)
    return item.caption


def load_training_image(
    item: ImageItem, bucket: Bucket, rng: random.Random | None = None
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Decode, resize and crop ``item`` to ``bucket``; random crop when ``rng`` is given.

    Returns ``(pixels, original_size, crop_top_left)``: a float CHW tensor in [-1, 1], the
    image's size ``(h, w)`` before resizing and the crop's ``(y, x)`` in resized pixels,
    i.e. SDXL's ``original_size`` and ``crops_coords_top_left`` (``target_size`` is the bucket).
    Raises ``DatasetError`` if the file became unreadable since the scan.
    """
    import torch  # here, so importing studio.data (e.g. `studio dataset check`) stays fast

    image, (width, height) = load_rgb(item.path, min_size=bucket)
    cropped, top_left = resize_and_crop(image, bucket, rng)
    pixels = torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1)
    return (pixels.float() / 127.5 - 1.0).contiguous(), (height, width), top_left
