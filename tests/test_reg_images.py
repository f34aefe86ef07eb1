"""``--reg-dir`` / ``--prior-weight``: prior images mixed into every epoch as sd-scripts does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio import train
from studio.config import TrainConfig
from studio.data import DatasetConfig, scan_dataset
from studio.data.regularization import balanced
from studio.formats.safetensors_io import read_header
from studio.training.run import setup_run


def _images(folder, count, colour, caption=None):
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.full((64, 64, 3), colour, dtype=np.uint8)
        pixels[i * 8 : i * 8 + 8] = 255 - np.array(colour, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        if caption:
            (folder / f"{i}.txt").write_text(caption)


@pytest.fixture
def folders(tmp_path):
    _images(tmp_path / "data" / "1_mystyle", 3, (200, 40, 40), caption="a red picture")
    _images(tmp_path / "reg" / "1_person", 2, (40, 40, 200))  # class captions from the folder name
    return tmp_path / "data", tmp_path / "reg"


def test_prior_images_repeat_in_order_until_they_match_the_training_samples(folders):
    _, reg = folders
    items = scan_dataset(DatasetConfig(reg)).items
    assert [(i.repeats, i.is_reg) for i in balanced(items, 3)] == [(2, True), (1, True)]
    assert [i.repeats for i in balanced(items, 1)] == [1]
    assert [i.repeats for i in balanced(items, 4)] == [2, 2]
    assert balanced([], 3) == []


def _config(data, reg, tmp_path, **overrides):
    values = dict(
        data=str(data),
        reg_dir=str(reg),
        output=str(tmp_path / "style.safetensors"),
        trigger="mystyle",
        resolution=64,
        batch_size=6,
        rank=4,
        steps=1,
        seed=1,
        train_text_encoder=False,
    )
    return TrainConfig(**{**values, **overrides})


def test_an_epoch_is_half_prior_with_class_captions_and_every_latent_cached(folders, tmp_path):
    data, reg = folders
    run = setup_run(_config(data, reg, tmp_path, batch_size=2))
    samples = [s for batch in run.batches(0) for s in batch]
    kinds = [run.items[run.samples[s]].is_reg for s in samples]
    assert len(samples) == 6 and kinds.count(True) == 3 and kinds.count(False) == 3
    captions = {run.items[run.samples[s]].caption for s in samples if run.items[run.samples[s]].is_reg}
    assert captions == {"person"}  # the class name; the trigger is never added to prior images
    assert len(run.latent_cache) == len(run.items) == 5  # prior latents are cached like the rest


@pytest.mark.slow  # three one-step trainings of the embedded model
def test_the_prior_loss_enters_with_its_weight_and_is_written(folders, tmp_path):
    data, reg = folders
    first = {}
    for weight in (0.0, 1.0, 3.0):
        out = tmp_path / f"w{weight}.safetensors"
        result = train(_config(data, reg, tmp_path, prior_weight=weight, output=str(out)))
        first[weight] = result.losses[0]  # one batch of all 6 samples, the same noise in each run
    # loss = mean(train losses + weight * prior losses): linear in the weight, and the prior counts
    assert first[1.0] != pytest.approx(first[0.0], rel=1e-3)
    assert first[3.0] - first[0.0] == pytest.approx(3 * (first[1.0] - first[0.0]), rel=1e-3)
    metadata = read_header(tmp_path / "w3.0.safetensors").metadata
    assert metadata["ss_prior_loss_weight"] == "3.0"
    assert metadata["ss_num_reg_images"] == "2" and metadata["ss_num_train_images"] == "3"  # as sd-scripts
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 2}}
    assert set(json.loads(metadata["ss_tag_frequency"])) == {"1_mystyle"}
