"""Validation loss: held-out images stay out of training, the loss is deterministic, the grid marks the best."""

from __future__ import annotations

import json

import pytest

from studio.cli import main
from studio.cli.grid import run_adapters
from studio.config import TrainConfig
from studio.data import DatasetConfig, scan_dataset
from studio.models.family import ModelFamily
from studio.models.loader import BaseModel
from studio.models.tiny import build_tiny_pipeline
from studio.samples import make_demo_dataset
from studio.training.metrics import validation_losses
from studio.training.recipe import train
from studio.training.run import setup_run
from studio.training.validation import split_validation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=3)


def tiny_base() -> BaseModel:
    pipeline = build_tiny_pipeline("sd1")
    pipeline.set_progress_bar_config(disable=True)
    return BaseModel(pipeline, ModelFamily.SD1, "epsilon", "tiny")


def config(dataset, folder, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset), output=str(folder / "style.safetensors"), trigger="inkstyle", resolution=64,
        batch_size=1, rank=2, alpha=2.0, lr=1e-2, steps=2, seed=3, train_text_encoder=False,
        validation_split=0.34, checkpoint_every=1,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_the_split_is_seeded_disjoint_and_never_takes_every_image(dataset):
    items = scan_dataset(DatasetConfig(root=dataset, resolution=64)).items
    kept, held = split_validation(items, 0.34, seed=3)
    assert len(held) == 1 and len(kept) == 2
    assert {i.path for i in kept}.isdisjoint({i.path for i in held})
    assert split_validation(list(reversed(items)), 0.34, seed=3)[1] == held  # by name, not by order
    assert len(split_validation(items, 0.5, seed=3)[0]) >= 1


def test_held_out_images_do_not_train_and_the_same_adapter_scores_the_same_twice(dataset, tmp_path):
    run = setup_run(config(dataset, tmp_path), base=tiny_base())
    held = {item.path for item in run.validation_items}
    assert len(held) == 1 and held.isdisjoint({item.path for item in run.items})
    assert {run.items[s].path for s in run.samples}.isdisjoint(held)
    first, second = run.validate(), run.validate()
    assert first == second and first > 0


@pytest.mark.slow
def test_validation_rows_are_equal_across_fresh_runs_and_the_grid_marks_the_best(dataset, tmp_path):
    runs = [train(config(dataset, tmp_path / name), base=tiny_base()) for name in ("a", "b")]
    a, b = (validation_losses(r.run_dir) for r in runs)
    assert sorted(a) == [1, 2] and a == b  # bit-equal across two runs
    lines = [json.loads(x) for x in (runs[0].run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 2, "val_loss": a[2]} in lines and any("lr" in x and "loss" in x for x in lines)
    rows = run_adapters(str(runs[0].run_dir))
    assert [label.split(" best")[0] for label, _ in rows] == ["step 1", "final"]  # final: step 2
    best = min(a, key=a.get)
    marked = [label for label, _ in rows if "best val" in label]
    assert marked == [f"{'step 1' if best == 1 else 'final'} best val {a[best]:.4f}"]


def test_validation_dir_and_bad_combinations(dataset, tmp_path, capsys):
    run = setup_run(
        config(dataset, tmp_path, validation_split=0.0, validation_dir=str(dataset)), base=tiny_base()
    )
    assert len(run.validation_items) == 3 and len(run.items) == 3
    with pytest.raises(Exception, match="pick one"):
        config(dataset, tmp_path, validation_dir=str(dataset)).validate()
    out = str(tmp_path / "o.safetensors")
    capsys.readouterr()  # the set-up above drew progress bars
    for extra in (["--validate-every", "2"], ["--validation-split", "0.2", "--validation-dir", str(dataset)]):
        assert main(["train", str(dataset), "--output", out, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("--validate-every needs" in err or "pick one" in err)
