"""Aspect buckets, resize + crop, training tensors and per-epoch batches."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from data.make_bad_dataset import save_image
from PIL import Image

from studio.data import (
    Bucket,
    DatasetConfig,
    ImageItem,
    epoch_batches,
    expand_samples,
    load_training_image,
    make_buckets,
    nearest_bucket,
    resize_and_crop,
    scan_dataset,
)
from studio.errors import StudioError


@pytest.mark.parametrize(("resolution", "step"), [(512, 64), (1024, 32), (768, 64)])
def test_bucket_grid_properties(resolution, step):
    buckets = make_buckets(resolution, step)
    low, high = max(step, resolution // 2), resolution * 2
    assert Bucket(resolution, resolution) in buckets
    for b in buckets:
        assert b.width % step == 0 and b.height % step == 0
        assert b.width * b.height <= resolution**2
        assert low <= b.width <= high and low <= b.height <= high
        assert Bucket(b.height, b.width) in buckets  # portrait and landscape alike
        # largest along one side (kohya's make_bucket_resolutions): no area is wasted
        taller = b.width * (b.height + step) > resolution**2 or b.height + step > high
        wider = (b.width + step) * b.height > resolution**2 or b.width + step > high
        assert taller or wider


def test_bucket_limits_and_bad_settings():
    assert min(min(b) for b in make_buckets(512, 64, min_side=384)) == 384
    assert max(max(b) for b in make_buckets(512, 64, max_side=640)) == 640
    for args in [(512, 0), (512, 12), (32, 64)]:
        with pytest.raises(StudioError):
            make_buckets(*args)


def test_images_go_to_the_nearest_aspect_bucket():
    buckets = make_buckets(512, 64)
    for width, height in [(512, 512), (1000, 500), (300, 900), (640, 480), (1920, 1080), (17, 100)]:
        chosen = nearest_bucket(width, height, buckets)
        distance = abs(math.log(chosen.width / chosen.height) - math.log(width / height))
        assert all(distance <= abs(math.log(b.width / b.height) - math.log(width / height)) for b in buckets)
    assert nearest_bucket(800, 800, buckets) == Bucket(512, 512)


def test_resize_covers_the_bucket_then_crops():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    crop, (top, left) = resize_and_crop(image, Bucket(128, 64))
    assert crop.size == (128, 64)
    assert (top, left) == (0, 32)  # resized to 192x64, centred
    offsets = {resize_and_crop(image, Bucket(128, 64), random.Random(seed))[1] for seed in range(20)}
    assert all(t == 0 and 0 <= x <= 64 for t, x in offsets) and len(offsets) > 5
    again = resize_and_crop(image, Bucket(128, 64), random.Random(3))[1]
    assert again == resize_and_crop(image, Bucket(128, 64), random.Random(3))[1]


def test_load_training_image_returns_tensor_and_sdxl_size_conditioning(tmp_path):
    save_image(tmp_path / "wide.png", (300, 150), (255, 255, 255))
    item = scan_dataset(DatasetConfig(tmp_path, resolution=128, bucket_step=32)).items[0]
    assert item.bucket == Bucket(160, 96)  # nearest to 2:1 within area 128**2
    pixels, original, crop = load_training_image(item, item.bucket)
    assert pixels.shape == (3, 96, 160) and pixels.dtype == torch.float32
    assert torch.allclose(pixels, torch.ones_like(pixels))  # white is 1.0
    assert original == (150, 300)  # (h, w)
    assert crop == (0, 16)  # (y, x): resized to 192x96, centred
    _, _, random_crop = load_training_image(item, item.bucket, random.Random(1))
    assert random_crop[0] == 0 and 0 <= random_crop[1] <= 192 - 160


def _item(bucket: Bucket, repeats: int) -> ImageItem:
    return ImageItem(Path("x.png"), "c", repeats, "f", bucket.width, bucket.height, bucket, ".txt")


def test_epoch_batches_are_single_bucket_complete_and_deterministic():
    square, wide, tall = Bucket(512, 512), Bucket(640, 384), Bucket(384, 640)
    items = [_item(square, 3), _item(wide, 1), _item(square, 2), _item(tall, 5), _item(wide, 4)]
    samples = expand_samples(items)
    assert len(samples) == 15 and samples.count(3) == 5

    batches = epoch_batches(items, batch_size=2, seed=42, epoch=0)
    flat = [sample for batch in batches for sample in batch]
    assert sorted(flat) == list(range(15))  # every (image, repeat) occurrence exactly once
    for batch in batches:
        assert 1 <= len(batch) <= 2
        assert len({items[samples[s]].bucket for s in batch}) == 1
    assert len(batches) == 3 + 3 + 3  # ceil(5/2) per bucket: last partial batches kept

    assert batches == epoch_batches(items, 2, seed=42, epoch=0)
    assert batches != epoch_batches(items, 2, seed=42, epoch=1)
    assert batches != epoch_batches(items, 2, seed=43, epoch=0)
    with pytest.raises(StudioError):
        epoch_batches(items, 0, seed=1, epoch=0)
