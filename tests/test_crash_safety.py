"""Nothing lost on a crash: kill -9 mid-training, kill mid-save, a full disk.

Each test runs the real ``studio`` command (or the real writer) in a child process and
kills or starves it, then checks what is left on disk.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from studio.models.default import default_model_dir
from studio.samples import make_demo_dataset

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and rlimits")

STEPS, EVERY = 12, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    default_model_dir()  # build the embedded model once, outside the processes we kill or starve
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=4)


def _train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "studio", "train", str(dataset), "--output", str(out),
        "--trigger", "inkstyle", "--resolution", "64", "--batch-size", "2", "--rank", "4",
        "--lr", "1e-3", "--seed", "3", "--steps", str(STEPS), "--checkpoint-every", str(EVERY), *extra,
    ]  # fmt: skip


def _steps_logged(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def test_kill_9_mid_run_then_resume_matches_an_uninterrupted_run(dataset, tmp_path):
    reference = tmp_path / "reference.safetensors"
    subprocess.run(_train_args(dataset, reference), check=True, capture_output=True)

    out = tmp_path / "killed.safetensors"
    run_dir = tmp_path / "killed-run"
    child = subprocess.Popen(_train_args(dataset, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _steps_logged(run_dir) < 2 * EVERY + 1 and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = _steps_logged(run_dir)
    assert 2 * EVERY < killed_at < STEPS and not out.exists(), "the kill should land mid-run"

    resumed = subprocess.run(
        _train_args(dataset, out, "--resume", str(run_dir)), capture_output=True, text=True, check=True
    )
    resumed_from = int(resumed.stdout.split("at step ")[1].split()[0])
    assert killed_at - resumed_from <= EVERY  # at most one checkpoint interval lost
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # redone steps are logged once
    ours, theirs = load_file(str(out)), load_file(str(reference))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-3, atol=1e-5, msg=key)


_WRITER = """
import sys, torch
from studio.formats.safetensors_io import save_tensors
big = {f"t{i}": torch.full((1 << 20,), float(sys.argv[2])) for i in range(24)}
print("ready", flush=True)
while True:
    save_tensors(sys.argv[1], big, {"version": sys.argv[2]})
"""


def test_kill_during_save_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "adapter.safetensors"
    subprocess.run(
        [sys.executable, "-c", _WRITER.replace("while True", "for _ in [0]"), str(path), "1"], check=True
    )
    for delay in (0.0, 0.01, 0.03, 0.07, 0.15):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), "2"], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.kill()
        child.wait()
        tensors = load_file(str(path))  # always a complete file: version 1, or version 2 whole
        values = {float(t[0]) for t in tensors.values()} | {float(t[-1]) for t in tensors.values()}
        assert len(tensors) == 24 and len(values) == 1 and values <= {1.0, 2.0}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "adapter.safetensors"]
    assert leftovers == [] or all(name.endswith(".tmp") for name in leftovers)


def test_full_disk_gives_a_clear_error_and_keeps_the_old_adapter(dataset, tmp_path):
    out = tmp_path / "style.safetensors"
    subprocess.run(_train_args(dataset, out, "--steps", "2"), check=True, capture_output=True)
    before = out.read_bytes()
    limit = 16 * 1024  # bytes per file: enough for logs and configs, not for an adapter or checkpoint

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    starved = subprocess.run(
        _train_args(dataset, out, "--steps", "2", "--rank", "32", "--overwrite"),
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert starved.returncode == 1, starved.stderr[-2000:]
    assert "File too large" in starved.stderr and "Traceback" not in starved.stderr
    assert out.read_bytes() == before  # the previous adapter survives whole
    run_dir = tmp_path / "style-run"
    leftovers = [p for p in tmp_path.rglob("*.tmp")] + [p for p in tmp_path.rglob(".*.tmp")]
    assert leftovers == []
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if not checkpoint.name.startswith("."):
            load_file(str(checkpoint / "lora.safetensors"))  # every checkpoint left is complete
