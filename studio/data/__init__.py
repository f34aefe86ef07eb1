"""The dataset layer of the LoRA trainer: scan a kohya-style folder, then feed training.

Typical trainer use::

    cfg = DatasetConfig(root, trigger="mystyle", resolution=512, shuffle_tags=True, keep_tokens=1)
    data = scan_dataset(cfg)                 # DatasetError if no usable image
    for message in data.warnings: log(message)
    samples = expand_samples(data.items)     # item index per (image, repeat) occurrence
    for epoch in range(epochs):
        for batch in epoch_batches(data.items, batch_size, seed, epoch):   # one bucket per batch
            rng = random.Random(f"{seed}:{epoch}:{batch[0]}")
            for sample in batch:
                item = data.items[samples[sample]]
                pixels, original_hw, crop_yx = load_training_image(
                    item, item.bucket, rng if cfg.random_crop else None)
                caption = caption_for_sample(item, cfg, rng)

- ``pixels``: float CHW tensor in [-1, 1] of the bucket's size; ``original_hw`` is the
  image's ``(h, w)`` before resizing, ``crop_yx`` the crop's top-left in resized pixels
  (SDXL's ``original_size`` / ``crops_coords_top_left``; ``target_size`` is the bucket).
- ``Bucket(width, height)`` is a NamedTuple: mind PIL's (w, h) against torch's (h, w).
- ``ImageItem(path, caption, repeats, folder, width, height, bucket, caption_source)``;
  ``caption`` already holds the trigger, ``caption_source == ""`` means fallback caption.
- ``ScannedDataset``: ``items``, ``problems`` (skipped files/folders, ``FileProblem(path,
  reason)``), ``notes`` (kept with a remark), ``warnings`` (strings), ``buckets``.
- kohya metadata: ``tag_frequency`` / ``dataset_dirs`` / ``bucket_info`` return the dicts
  for ``ss_tag_frequency`` / ``ss_dataset_dirs`` / ``ss_bucket_info`` (JSON-encode them).
- ``check_dataset(cfg, tokenizer=None, token_limit=77) -> DatasetReport`` backs
  ``studio dataset check``; ``report.format()`` is its text.
"""

from studio.data.buckets import Bucket, make_buckets, nearest_bucket, resize_and_crop
from studio.data.captions import has_word, with_trigger
from studio.data.dataset import DatasetConfig, ImageItem, ScannedDataset, scan_dataset
from studio.data.files import FileProblem
from studio.data.images import IMAGE_EXTENSIONS, load_rgb, probe_image, to_rgb
from studio.data.kohya_stats import bucket_info, dataset_dirs, tag_frequency
from studio.data.report import DatasetReport, check_dataset
from studio.data.training import (
    caption_for_sample,
    epoch_batches,
    expand_samples,
    load_training_image,
    shuffle_tags,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Bucket",
    "DatasetConfig",
    "DatasetReport",
    "FileProblem",
    "ImageItem",
    "ScannedDataset",
    "bucket_info",
    "caption_for_sample",
    "check_dataset",
    "dataset_dirs",
    "epoch_batches",
    "expand_samples",
    "has_word",
    "load_rgb",
    "load_training_image",
    "make_buckets",
    "nearest_bucket",
    "probe_image",
    "resize_and_crop",
    "scan_dataset",
    "shuffle_tags",
    "tag_frequency",
    "to_rgb",
    "with_trigger",
]
