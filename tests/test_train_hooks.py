"""The trainer's hooks, each on its own, and the stop request end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from studio.config import TrainConfig
from studio.errors import StopTraining, TrainingDiverged
from studio.samples import make_demo_dataset
from studio.training.checkpoint import list_checkpoints
from studio.training.hooks import STOP, Callback, CheckpointEvery, LossRecord, NanGuard, StepEvent, run_hooks
from studio.training.recipe import needs_everything, train


def _event(step: int, loss: float = 0.5) -> StepEvent:
    return StepEvent(step=step, total_steps=5, epoch=0, loss=loss, lr=1e-4, images_per_second=1.0)


def test_nan_guard_passes_finite_losses_and_names_the_last_checkpoint(tmp_path):
    guard = NanGuard(tmp_path)
    guard(_event(1, 0.3))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2; no checkpoint was written yet"):
        guard(_event(2, math.nan))
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    with pytest.raises(TrainingDiverged, match=r"inf at step 3; the last good checkpoint is .*step-000002"):
        guard(_event(3, math.inf))


def test_checkpoints_follow_their_cadence_and_leave_the_last_step_to_the_end():
    saved: list[int] = []
    hook = CheckpointEvery(2, total_steps=5, save=lambda: saved.append(len(saved)) or f"ckpt-{len(saved)}")
    events = [_event(step) for step in range(1, 6)]
    for event in events:
        hook(event)
    assert [e.step for e in events if e.checkpoint] == [2, 4] and len(saved) == 2
    assert not any(CheckpointEvery(0, 5, save=lambda: None).due(step) for step in range(1, 6))
    assert CheckpointEvery(2, 4, save=lambda: None).due(4) is False  # the end saves its own


def test_overlapped_steps_drain_where_a_hook_needs_the_finished_state():
    config = TrainConfig(data=".", overlap_steps=True)
    hooks = [CheckpointEvery(3, 10, save=lambda: None)]
    assert [s for s in range(1, 11) if needs_everything(config, hooks, s, 10)] == [3, 6, 9, 10]
    assert all(needs_everything(TrainConfig(data=".", overlap_steps=False), [], s, 10) for s in range(1, 11))


def test_on_step_stops_by_return_value_or_exception_and_every_hook_still_runs():
    def raising(event):
        raise StopTraining

    assert Callback(lambda e: "stop")(_event(1)) == STOP
    assert Callback(raising)(_event(1)) == STOP
    assert Callback(lambda e: None)(_event(1)) is None and Callback(lambda e: "go")(_event(1)) is None
    losses: list[float] = []
    assert run_hooks([Callback(lambda e: "stop"), LossRecord(losses)], _event(1, 0.25)) is True
    assert losses == [0.25]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=4)


def _config(dataset, out, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset), output=str(out / "style.safetensors"), trigger="inkstyle", resolution=64,
        batch_size=2, rank=4, lr=1e-3, steps=4, seed=7,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def test_stop_saves_a_checkpoint_with_a_usable_adapter_and_returns(dataset, tmp_path):
    seen: list[int] = []
    result = train(
        _config(dataset, tmp_path, overlap_steps=False),
        lambda e: seen.append(e.step) or ("stop" if e.step == 2 else None),
    )
    assert result.stopped and result.steps == 2 and seen == [1, 2] and len(result.losses) == 2
    assert (
        result.checkpoint == list_checkpoints(result.run_dir)[-1] and result.checkpoint.name == "step-000002"
    )
    assert result.outputs == [result.checkpoint / "style-step000002.safetensors"]
    assert load_file(str(result.outputs[0]))  # a kohya file, not the final export
    assert not (tmp_path / "style.safetensors").exists()


def test_a_stopped_run_resumes_to_the_same_adapter(dataset, tmp_path):
    straight = train(_config(dataset, tmp_path / "a"))

    def stop_at_two(event):
        if event.step == 2:
            raise StopTraining

    stopped = train(_config(dataset, tmp_path / "b"), stop_at_two)  # overlapped: stops at step 2 or 3
    assert (
        stopped.stopped and 2 <= stopped.steps < 4 and stopped.checkpoint.name == f"step-{stopped.steps:06d}"
    )
    resumed = train(_config(dataset, tmp_path / "b", resume=str(stopped.checkpoint)))
    assert not resumed.stopped and resumed.steps == 4
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    a, b = load_file(str(straight.outputs[0])), load_file(str(resumed.outputs[0]))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-5)
