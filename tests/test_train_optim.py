"""Optimisers, their checkpoints and EMA: each optimiser learns, N+N steps equal 2N, EMA matches a reference."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from studio.cli import main
from studio.config import OPTIMIZERS, TrainConfig
from studio.formats.kohya import to_kohya_state_dict
from studio.lora.inject import extract_lora
from studio.models.family import ModelFamily
from studio.models.loader import BaseModel
from studio.models.tiny import build_tiny_pipeline
from studio.samples import make_demo_dataset
from studio.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from studio.training.optim import build_lr_scheduler, build_optimizer, optimizer_mode
from studio.training.recipe import train

LR = {"adamw": 3e-2, "adamw8bit": 3e-2, "prodigy": 1.0, "adafactor": 3e-2, "schedulefree": 3e-2}


def _runnable(kind: str) -> bool:
    if kind == "adamw8bit":  # bitsandbytes' 8-bit kernels need CUDA here
        return importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()
    module = {"prodigy": "prodigyopt", "schedulefree": "schedulefree"}.get(kind)
    return module is None or importlib.util.find_spec(module) is not None


KINDS = [
    pytest.param(k, marks=pytest.mark.skipif(not _runnable(k), reason=f"{k} unavailable")) for k in OPTIMIZERS
]


class Problem:
    """A small regression net trained on random mini-batches drawn from a saved generator."""

    def __init__(self, kind: str):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        data = torch.Generator().manual_seed(1)
        self.x = torch.randn(256, 8, generator=data)
        self.y = torch.tanh(self.x @ torch.randn(8, 4, generator=data))
        groups = [{"params": list(self.model[0].parameters()), "lr": LR[kind]},
                  {"params": list(self.model[2].parameters()), "lr": LR[kind]}]  # fmt: skip
        self.optimizer = build_optimizer(groups, kind, LR[kind], 0.01, torch.device("cpu"))
        self.scheduler = build_lr_scheduler("constant_with_warmup", self.optimizer, 3, 100)
        self.generator = torch.Generator().manual_seed(2)
        optimizer_mode(self.optimizer, training=True)

    def loss(self) -> float:
        optimizer_mode(self.optimizer, training=False)
        with torch.no_grad():
            value = torch.nn.functional.mse_loss(self.model(self.x), self.y).item()
        optimizer_mode(self.optimizer, training=True)
        return value

    def steps(self, n: int) -> None:
        for _ in range(n):
            batch = torch.randint(0, len(self.x), (32,), generator=self.generator)
            loss = torch.nn.functional.mse_loss(self.model(self.x[batch]), self.y[batch])
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()

    def save(self, run_dir, step: int):
        """As the trainer does: the checkpoint is written in eval mode."""
        optimizer_mode(self.optimizer, training=False)
        path = save_checkpoint(
            run_dir, TrainingState(step, step, []), {"m": self.model}, self.optimizer, self.scheduler,
            self.generator, {},
        )  # fmt: skip
        optimizer_mode(self.optimizer, training=True)
        return path


@pytest.mark.parametrize("kind", KINDS)
def test_each_optimizer_lowers_the_loss(kind):
    problem = Problem(kind)
    before = problem.loss()
    problem.steps(60)
    assert problem.loss() < 0.5 * before


@pytest.mark.parametrize("kind", KINDS)
def test_each_optimizer_resumes_exactly_from_a_checkpoint(kind, tmp_path):
    straight = Problem(kind)
    straight.steps(5)
    checkpoint = straight.save(tmp_path, 5)
    straight.steps(5)

    resumed = Problem(kind)
    with torch.no_grad():  # start elsewhere: everything must come from the checkpoint
        for p in resumed.model.parameters():
            p.add_(1.0)
    optimizer_mode(resumed.optimizer, training=False)
    load_checkpoint(checkpoint, {"m": resumed.model}, resumed.optimizer, resumed.scheduler, resumed.generator)
    optimizer_mode(resumed.optimizer, training=True)
    resumed.steps(5)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# -- end to end, on the tiny SD 1.x pipeline -------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=2, size=64)


def tiny_base() -> BaseModel:
    pipeline = build_tiny_pipeline("sd1")
    pipeline.set_progress_bar_config(disable=True)
    return BaseModel(pipeline, ModelFamily.SD1, "epsilon", "tiny")


def config(dataset, folder, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset), output=str(folder / "style.safetensors"), trigger="inkstyle", resolution=64,
        batch_size=1, rank=2, alpha=2.0, lr=1e-2, steps=2, seed=3, checkpoint_every=1, overlap_steps=False,
        train_text_encoder=False,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def lora_params(base: BaseModel) -> dict[str, torch.Tensor]:
    unet = base.components["unet"]
    return {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}


def resume_from(step: int, dataset, straight_dir, folder, **overrides):
    """A run resumed from the straight run's checkpoint at ``step`` (N + N against 2N)."""
    checkpoint = straight_dir / "style-run" / "checkpoints" / f"step-{step:06d}"
    return train(config(dataset, folder, resume=str(checkpoint), **overrides), base=tiny_base())


def kohya_tensors(base: BaseModel, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The kohya tensors the export writes for ``base``'s LoRA, with ``weights`` put in first."""
    unet = base.components["unet"]
    if weights:
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if name in weights:
                    param.copy_(weights[name])
    return to_kohya_state_dict(extract_lora(base.components), base.components, base.family)


def assert_same_file(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.skipif(not _runnable("schedulefree"), reason="schedulefree unavailable")
def test_schedule_free_run_resumes_exactly_and_exports_its_average(dataset, tmp_path):
    settings = dict(optimizer="schedulefree", lr_scheduler="constant", warmup_steps=2)
    straight = train(config(dataset, tmp_path / "a", **settings), base=tiny_base())
    resumed = resume_from(1, dataset, tmp_path / "a", tmp_path / "b", **settings)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)
    assert_same_file(straight.outputs[0], resumed.outputs[0])
    # The file holds the averaged (eval) weights; the model trains on another sequence.
    exported, training = load_file(str(straight.outputs[0])), kohya_tensors(straight.base)
    assert any(not torch.allclose(exported[k].float(), training[k].float(), atol=1e-4) for k in exported)


@pytest.mark.slow
def test_ema_export_matches_a_reference_and_survives_resume(dataset, tmp_path):
    recorded: list[dict[str, torch.Tensor]] = []
    base = tiny_base()
    settings = dict(ema=True, ema_decay=0.6, steps=3, checkpoint_every=2)
    straight = train(
        config(dataset, tmp_path / "a", **settings),
        on_step=lambda e: recorded.append(lora_params(base)),
        base=base,
    )
    assert len(recorded) == 3
    # diffusers' EMAModel rule, by hand: step 1 copies, then decay min(d, (1+t)/(10+t)), t = step-1.
    reference = dict(recorded[0])
    for step, weights in enumerate(recorded[1:], start=2):
        decay = min(0.6, step / (9 + step))
        reference = {k: decay * reference[k] + (1 - decay) * weights[k] for k in reference}
    exported = load_file(str(straight.outputs[0]))
    expected, last = kohya_tensors(base, reference), kohya_tensors(base, recorded[-1])
    assert exported.keys() == expected.keys()
    for key in exported:
        torch.testing.assert_close(exported[key].float(), expected[key].float(), rtol=2e-3, atol=1e-6)
    assert any(not torch.allclose(exported[k].float(), last[k].float(), atol=1e-4) for k in exported)

    resumed = resume_from(2, dataset, tmp_path / "a", tmp_path / "b", **settings)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)
    assert_same_file(straight.outputs[0], resumed.outputs[0])


def test_missing_optimizer_packages_are_one_line_and_exit_2(dataset, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "x.safetensors")
    for kind, package in [
        ("prodigy", "prodigyopt"),
        ("schedulefree", "schedulefree"),
        ("adamw8bit", "bitsandbytes"),
    ]:
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed
        assert main(["train", str(dataset), "--output", out, "--optimizer", kind]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pip install {package}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--optimizer", "schedulefree", "--lr-scheduler", "cosine"], "replaces the learning-rate schedule"),
        (["--optimizer", "schedulefree", "--lr-scheduler", "constant", "--ema"], "drop --ema"),
        (["--optimizer", "prodigy", "--lr", "1", "--te-lr", "0.5"], "one step size for all parameter groups"),
    ],
)
def test_impossible_optimizer_combinations_are_one_line_and_exit_2(dataset, tmp_path, capsys, flags, says):
    assert main(["train", str(dataset), "--output", str(tmp_path / "x.safetensors"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err


def test_the_old_warmup_flag_and_the_prodigy_preset():
    from studio.cli import build_parser
    from studio.cli.train import config_from_args
    from studio.presets import PRESETS

    for flag in ("--lr-warmup-steps", "--warmup-steps"):
        assert config_from_args(build_parser().parse_args(["train", flag, "7"])).warmup_steps == 7
    prodigy = PRESETS["Prodigy"].apply()
    assert (prodigy.optimizer, prodigy.lr, prodigy.effective_te_lr) == ("prodigy", 1.0, 1.0)
    assert prodigy.prodigy_safeguard_warmup and prodigy.prodigy_bias_correction
    prodigy.validate()
