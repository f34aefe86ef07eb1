"""Regularisation (prior) images for ``--reg-dir``, mixed into training as sd-scripts does.

The folder is read like a dataset (kohya ``N_class`` folders: the class name is the caption of
an image without one; the trigger is never added). As in sd-scripts, the prior images are
repeated, in order, until there are as many prior samples per epoch as training samples, so
half of what an epoch sees is the prior; their loss is weighed by ``--prior-weight``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from studio.data.dataset import DatasetConfig, ImageItem, ScannedDataset, scan_dataset


def balanced(reg: list[ImageItem], train_samples: int) -> list[ImageItem]:
    """``reg`` marked as prior images, with repeats raised so their samples reach ``train_samples``."""
    counts = [0] * len(reg)
    total = 0
    while reg and total < train_samples:
        for i, item in enumerate(reg):
            counts[i] += item.repeats
            total += item.repeats
            if total >= train_samples:
                break
    return [dataclasses.replace(item, repeats=n, is_reg=True) for item, n in zip(reg, counts) if n]


def add_regularization(dataset: ScannedDataset, config: DatasetConfig, reg_dir: str | Path) -> ScannedDataset:
    """``dataset`` with the prior images of ``reg_dir`` appended (bucketed like the training images)."""
    reg_config = dataclasses.replace(config, root=Path(reg_dir), trigger=None)
    reg = scan_dataset(reg_config)
    train_samples = sum(item.repeats for item in dataset.items)
    items = dataset.items + balanced(reg.items, train_samples)
    problems = dataset.problems + reg.problems
    notes = dataset.notes + reg.notes
    return dataclasses.replace(dataset, items=items, problems=problems, notes=notes, reg_scanned=reg.items)
