"""The exported file's metadata comes from the TrainConfig in one place, and forgets no option."""

from __future__ import annotations

import dataclasses

import pytest

from studio.config import TrainConfig
from studio.data import DatasetConfig, scan_dataset
from studio.formats.metadata import kohya_metadata, metadata_resolution, modelspec_metadata
from studio.models.family import ModelFamily
from studio.models.loader import BaseModel
from studio.options import specs
from studio.samples import make_demo_dataset
from studio.training.export import NOT_IN_METADATA, training_info

BASE = BaseModel(pipeline=None, family=ModelFamily.SD1, prediction_type="epsilon", source="default")
CLOCK = ("ss_training_finished_at", "modelspec.date")  # the export's own time


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = make_demo_dataset(tmp_path_factory.mktemp("data"), count=3)
    return scan_dataset(DatasetConfig(root=folder, resolution=64))


def metadata(config: TrainConfig, dataset, world_size: int = 1) -> dict[str, str]:
    info = training_info(config, BASE, dataset, 64, 10, 1_700_000_000.0, 2, world_size)
    return {k: v for k, v in kohya_metadata(info).items() if k not in CLOCK}


def _changed(spec):
    """A legal value other than the default."""
    d, o = spec.default, spec.option
    if o.choices:
        return next(c for c in o.choices if c != d)
    if spec.kind is bool:
        return not d
    if spec.kind is int:
        return max(d or 0, int(o.minimum or 0)) + 1
    if spec.kind is float:
        return 0.5 if d is None else d / 2 + 0.25
    if spec.kind is list:
        return ["another prompt"]
    return "other-" + (d or "")


def test_not_in_metadata_lists_only_real_options_with_a_reason():
    names = {spec.name for spec in specs(TrainConfig)}
    assert set(NOT_IN_METADATA) <= names
    assert all(reason.strip() for reason in NOT_IN_METADATA.values())


# Options that apply only beside another: compared on a config that has it.
NEEDS = {"lokr_factor": {"network": "lokr"}}


@pytest.mark.parametrize("spec", specs(TrainConfig), ids=lambda s: s.name)
def test_every_option_is_written_or_listed_as_not_written(dataset, spec):
    """A new TrainConfig field fails here until it is written or listed in NOT_IN_METADATA."""
    plain = TrainConfig(**NEEDS.get(spec.name, {}))
    other = dataclasses.replace(plain, **{spec.name: _changed(spec)})
    other.validate()
    written = metadata(other, dataset) != metadata(plain, dataset)
    assert written == (spec.name not in NOT_IN_METADATA), (
        f"{spec.name}: {'written, but listed in' if not written else 'not written and not in'} NOT_IN_METADATA"
    )


def test_random_crop_total_batch_and_layers_are_the_runs(dataset):
    config = TrainConfig(random_crop=True, batch_size=3, gradient_accumulation=2, layers="full")
    meta = metadata(config, dataset, world_size=4)
    assert meta["ss_random_crop"] == "True" and meta["ss_cache_latents"] == "False"
    assert meta["ss_batch_size_per_device"] == "3" and meta["ss_gradient_accumulation_steps"] == "2"
    assert meta["ss_total_batch_size"] == "24"  # 4 processes x 3 images x 2 accumulated micro-batches
    assert meta["studio.layers"] == "full"
    plain = metadata(TrainConfig(), dataset)
    assert plain["ss_random_crop"] == "False" and plain["ss_cache_latents"] == "True"
    assert plain["ss_total_batch_size"] == "1"
    assert plain["ss_optimizer"] == "AdamW(weight_decay=0.01)" and plain["ss_max_grad_norm"] == "1.0"


def test_one_modelspec_builder():
    keys = modelspec_metadata(
        ModelFamily.SDXL, "epsilon", title="t", resolution=(832, 1216), date=0, trigger="ink", tags=["a", "b"]
    )
    assert keys == {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": "t",
        "modelspec.resolution": "832x1216",
        "modelspec.date": "1970-01-01T00:00:00+00:00",
        "modelspec.prediction_type": "epsilon",
        "modelspec.trigger_phrase": "ink",
        "modelspec.tags": "a, b",
    }
    assert modelspec_metadata(ModelFamily.SD2, "v_prediction", title="x")["modelspec.resolution"] == "768x768"


@pytest.mark.parametrize(
    ("metadata", "size"),
    [
        ({"modelspec.resolution": "128x96"}, (128, 96)),
        ({"ss_resolution": "(128, 128)"}, (128, 128)),
        ({"ss_resolution": "[768, 512]", "modelspec.resolution": "broken"}, (768, 512)),
        ({"ss_resolution": "None"}, None),
        ({}, None),
    ],
)
def test_metadata_resolution(metadata, size):
    assert metadata_resolution(metadata) == size
