"""Every speed or memory switch of the trainer keeps the plain path's losses and adapter.

Runs on the embedded model at 64 px, so the whole recipe (caching, DDP, compile, export) is
the real one; only the sizes are small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from studio.cli import main
from studio.compile_cache import use_persistent_compile_cache
from studio.config import TrainConfig
from studio.models.default import cache_dir
from studio.samples import make_demo_dataset
from studio.training.recipe import StepEvent, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=8)


def _config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset),
        output=str(out / "style.safetensors"),
        resolution=64,
        batch_size=4,
        rank=4,
        lr=1e-3,
        steps=6,
        seed=3,
        fused_optimizer=False,
        overlap_steps=False,
    )
    return TrainConfig(**{**values, **overrides})


def _run(dataset: Path, out: Path, **overrides) -> tuple[list[float], dict[str, torch.Tensor]]:
    out.mkdir(parents=True, exist_ok=True)
    result = train(_config(dataset, out, **overrides))
    return result.losses, load_file(str(result.outputs[0]))


def _assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)


@pytest.fixture(scope="module")
def plain(dataset, tmp_path_factory):
    return _run(dataset, tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize(
    ("switch", "tol"),
    [({"fused_optimizer": True}, 1e-5), ({"channels_last": True}, 1e-4), ({"overlap_steps": True}, 0.0)],
    ids=["fused-adamw", "channels-last", "overlap-steps"],
)
def test_switch_keeps_the_losses_and_the_adapter(plain, dataset, tmp_path, switch, tol):
    losses, adapter = _run(dataset, tmp_path, **switch)
    assert len(losses) == len(plain[0]) == 6
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain[0]), rtol=tol, atol=tol)
    _assert_same_adapter(adapter, plain[1], max(tol, 1e-6) * 10)


def test_mixed_precision_steps_skip_peft_input_casts_with_the_same_losses(dataset, tmp_path):
    """bf16 autocast on the CPU: leaving the adapters' inputs in bf16 changes no bit of the run."""
    cast, cast_adapter = _run(dataset, tmp_path / "cast", mixed_precision="bf16", adapter_input_casts=True)
    free, free_adapter = _run(dataset, tmp_path / "free", mixed_precision="bf16")
    assert free == cast
    _assert_same_adapter(free_adapter, cast_adapter, 0.0)


def test_an_adapter_layer_without_its_input_cast_copies_less_and_computes_the_same():
    """What the switch saves: the fp32 copy of a bf16 input and autocast's copy back, each way."""
    from peft import LoraConfig, inject_adapter_in_model

    from studio.lora.inject import set_input_casts

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["0"], init_lora_weights="gaussian")
    inject_adapter_in_model(config, model)
    for p in model.parameters():
        p.data = p.data.float() if p.requires_grad else p.data  # fp32 adapter, bf16 base
    x = torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True)

    def run(enabled: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        set_input_casts(model, enabled)
        x.grad = None
        with torch.profiler.profile() as prof, torch.autocast("cpu", torch.bfloat16):
            out = model(x)
            out.float().square().sum().backward()
        copies = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return out.detach(), x.grad.clone(), copies

    out_cast, grad_cast, copies_cast = run(True)
    out_free, grad_free, copies_free = run(False)
    assert torch.equal(out_free, out_cast) and torch.equal(grad_free, grad_cast)
    assert copies_free <= copies_cast - 2, (copies_free, copies_cast)


def test_overlapped_steps_still_report_every_step_in_order_with_its_checkpoint(dataset, tmp_path):
    events: list[StepEvent] = []
    config = _config(dataset, tmp_path, overlap_steps=True, checkpoint_every=2, steps=5)
    train(config, on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert [e.checkpoint is not None for e in events] == [False, True, False, True, False]
    # A checkpoint holds the losses of every step up to it, none after.
    state = json.loads((events[3].checkpoint / "state.json").read_text())
    assert len(state["losses"]) == 4


def test_low_memory_mode_is_gradient_checkpointing_with_cached_text(plain, dataset, tmp_path):
    """Checkpointing recomputes the same activations, so the loss equals a frozen-TE plain run."""
    frozen, frozen_adapter = _run(dataset, tmp_path / "frozen", train_text_encoder=False)
    low, low_adapter = _run(dataset, tmp_path / "low", low_memory=True)
    torch.testing.assert_close(torch.tensor(low), torch.tensor(frozen), rtol=1e-5, atol=1e-6)
    _assert_same_adapter(low_adapter, frozen_adapter, 1e-5)
    assert not any(key.startswith("lora_te") for key in low_adapter)
    saved = (tmp_path / "low" / "style-run" / "config.toml").read_text()
    assert "gradient_checkpointing = true" in saved and "train_text_encoder = false" in saved


@pytest.mark.slow
def test_compiled_training_keeps_the_losses(plain, dataset, tmp_path):
    """torch.compile (inductor; about 80 s of compiling on 2 CPU cores) against eager."""
    losses, adapter = _run(dataset, tmp_path, compile=True)
    # Fused kernels round differently; over 6 steps at lr 1e-3 that drifts the loss by ~1.5%.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain[0]), rtol=3e-2, atol=5e-3)
    # Adam turns tiny gradient differences into lr-sized steps, element by element, so the
    # adapter is compared as a whole: within 5% of the eager one in Frobenius norm.
    assert adapter.keys() == plain[1].keys()
    diff = sum((adapter[k] - plain[1][k]).float().norm() ** 2 for k in adapter) ** 0.5
    size = sum(plain[1][k].float().norm() ** 2 for k in adapter) ** 0.5
    assert diff / size < 0.05
    # The kernels went to the studio's cache (kept across reboots), not the temporary folder.
    assert any((cache_dir() / "torch-compile").rglob("*.py"))


@pytest.mark.slow
def test_training_with_compiled_blocks_keeps_the_losses(plain, dataset, tmp_path):
    """Inductor on the UNet's repeated blocks only (on a GPU inside the replayed steps)."""
    losses, adapter = _run(dataset, tmp_path, compile_blocks=True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain[0]), rtol=3e-2, atol=5e-3)
    diff = sum((adapter[k] - plain[1][k]).float().norm() ** 2 for k in adapter) ** 0.5
    size = sum(plain[1][k].float().norm() ** 2 for k in adapter) ** 0.5
    assert adapter.keys() == plain[1].keys() and diff / size < 0.05


@pytest.mark.parametrize("whole", ["--compile", "--cuda-graphs"])
def test_compiled_blocks_beside_a_whole_unet_compile_is_one_clear_refusal(dataset, tmp_path, capsys, whole):
    out = tmp_path / "style.safetensors"
    assert main(["train", str(dataset), "--output", str(out), "--compile-blocks", whole]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--compile-blocks with {whole}" in err and "pick one" in err
    assert not out.exists()


@pytest.mark.gpu
def test_cuda_graph_training_keeps_the_losses(dataset, tmp_path):
    """Compiled + CUDA graphs against eager, both on the GPU in bf16."""
    eager, eager_adapter = _run(dataset, tmp_path / "eager", mixed_precision="bf16")
    graphs, graphs_adapter = _run(dataset, tmp_path / "graphs", mixed_precision="bf16", cuda_graphs=True)
    torch.testing.assert_close(torch.tensor(graphs), torch.tensor(eager), rtol=3e-2, atol=1e-3)
    _assert_same_adapter(graphs_adapter, eager_adapter, 3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("switches", [{}, {"cuda_graphs": True, "low_memory": True}], ids=["eager", "graphs"])
def test_bf16_previews_render_on_the_gpu(dataset, tmp_path, switches):
    """Previews run the pipeline (bf16 UNet, fp32 VAE) mid-training, also between graph replays."""
    events: list[StepEvent] = []
    config = _config(dataset, tmp_path, mixed_precision="bf16", sample_every=3, **switches)
    train(config, on_step=events.append)
    previews = [path for event in events for path in event.samples]
    assert [len(e.samples) > 0 for e in events] == [False, False, True] * 2
    for path in previews:
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        assert pixels.shape[:2] == (64, 64) and pixels.std() > 1.0, path  # an image, not a blank


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_two_processes_match_one_at_the_same_global_batch(plain, dataset, tmp_path, accumulation):
    """``studio train --gpus 2`` at batch 2 per process = one process at batch 4 (here over gloo),
    also when gradients accumulate over micro-batches before the processes average them."""
    if accumulation > 1:
        plain = _run(dataset, tmp_path / "one", gradient_accumulation=accumulation)
    out = tmp_path / "two.safetensors"
    command = [
        sys.executable, "-m", "studio", "train", str(dataset), "--output", str(out), "--gpus", "2",
        "--resolution", "64", "--batch-size", "2", "--rank", "4", "--lr", "1e-3", "--steps", "6",
        "--seed", "3", "--no-fused-optimizer", "--no-overlap", "--gradient-accumulation", str(accumulation),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "launching 2 processes" in done.stdout
    assert done.stdout.count("trained 6 steps") == 1  # rank 0 reports, once
    metrics = [json.loads(line) for line in (tmp_path / "two-run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    losses = torch.tensor([m["loss"] for m in metrics])
    torch.testing.assert_close(losses, torch.tensor(plain[0]), rtol=1e-4, atol=1e-6)
    _assert_same_adapter(load_file(str(out)), plain[1], 1e-4)
    with safe_open(str(out), "pt") as f:  # 2 processes x batch 2 x the accumulated micro-batches
        assert f.metadata()["ss_total_batch_size"] == str(2 * 2 * accumulation)


def test_compile_cache_is_kept_in_the_studio_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    ours = cache_dir() / "torch-compile"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_persistent_compile_cache() == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing diffusers sets
    assert use_persistent_compile_cache() == ours
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(ours)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert use_persistent_compile_cache() == tmp_path
