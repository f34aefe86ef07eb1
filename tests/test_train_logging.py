"""--log-with: accelerate's TensorBoard tracker writes readable event files with the run's scalars."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from studio.cli import main
from studio.config import TrainConfig
from studio.models.family import ModelFamily
from studio.models.loader import BaseModel
from studio.models.tiny import build_tiny_pipeline
from studio.samples import make_demo_dataset
from studio.training.recipe import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=3)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_events_hold_loss_lr_validation_and_previews(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pipeline = build_tiny_pipeline("sd1")
    pipeline.set_progress_bar_config(disable=True)
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "style.safetensors"), resolution=64, batch_size=1, rank=2,
        steps=2, seed=1, train_text_encoder=False, log_with="tensorboard", validation_split=0.34,
        sample_every=2, sample_steps=2, sample_prompts=["a picture"],
    )  # fmt: skip
    result = train(config, base=BaseModel(pipeline, ModelFamily.SD1, "epsilon", "tiny"))
    events = list((result.run_dir / "logs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"loss", "lr", "val_loss"} <= set(tags["scalars"]) and "samples/0" in tags["images"]
    logged = [(e.step, e.value) for e in accumulator.Scalars("loss")]
    assert [s for s, _ in logged] == [1, 2]
    for (_, value), expected in zip(logged, result.losses):
        assert value == pytest.approx(expected, rel=1e-6)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    val = next(r["val_loss"] for r in rows if "val_loss" in r and r["step"] == 2)
    assert accumulator.Scalars("val_loss")[-1].value == pytest.approx(val, rel=1e-6)


def test_a_missing_tracker_package_is_one_line_and_exit_2(dataset, tmp_path, monkeypatch, capsys):
    for package in ("tensorboard", "wandb"):
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed
        out = str(tmp_path / "x.safetensors")
        assert main(["train", str(dataset), "--output", out, "--log-with", package, "--steps", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pip install {package}" in err
