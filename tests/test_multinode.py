"""Training across machines: two launchers on one machine stand in for two nodes.

Each "node" is its own launcher process (torchrun, or ``accelerate launch``) with its own
working directory, joined to the other over loopback, one CPU process each, talking gloo.
``--output`` is relative, so every node writes under its own folder and the test sees which
node wrote what. At batch 2 per process the run must equal ``studio train`` in one process at
batch 4, the property docs/multi-node.md promises for nodes x processes x batch. Everything runs
on the CPU, also where a GPU is present.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from studio.samples import make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # start to exit of a run (both nodes); ~15-30 s on 2 busy cores

pytestmark = pytest.mark.slow


def _train_args(dataset: Path, steps: int, batch: int = 2) -> list[str]:
    """``studio train`` at ``batch`` per process; 2 nodes at 2 train like 1 process at 4."""
    return [
        "-m", "studio", "train", str(dataset), "--output", "style.safetensors", "--batch-size", str(batch),
        "--resolution", "64", "--rank", "4", "--lr", "1e-3", "--steps", str(steps), "--seed", "3",
        "--no-fused-optimizer", "--no-overlap",
    ]  # fmt: skip


# How each launcher starts node {rank} (`python -m ...`), up to the training module.
_TORCHRUN = "torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank {rank} "
LAUNCHERS = {
    "torchrun-static": _TORCHRUN + "--master-addr 127.0.0.1 --master-port {port}",
    "torchrun-c10d": _TORCHRUN + "--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{port} --rdzv-id test",
    # --multi_gpu goes through torchrun (on a machine without GPUs the trainer falls back to
    # gloo); with --cpu instead, accelerate would start every node's process on its own.
    "accelerate": "accelerate.commands.launch --multi_gpu --num_machines 2 --num_processes 2 "
    "--machine_rank {rank} --main_process_ip 127.0.0.1 --main_process_port {port} "
    "--mixed_precision no --dynamo_backend no",
}


@dataclass
class Nodes:
    launcher: str
    dirs: list[Path]  # working directory of node 0 and node 1
    logs: list[str]

    @property
    def writer(self) -> int:
        """The node that held global rank 0: the only one that reports (studio/cli/train.py)."""
        reporting = [i for i, log in enumerate(self.logs) if "trained " in log and " steps in " in log]
        assert len(reporting) == 1, [log[-2000:] for log in self.logs]
        return reporting[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(home: Path) -> dict[str, str]:
    # CPU processes only, also on a GPU machine: two "nodes" there would share its one GPU.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["HF_HOME"] = str(home)  # no accelerate config file of the developer's leaks in
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only, like NCCL_SOCKET_IFNAME between machines
    return env


def _run_nodes(launcher: str, train_args: list[str], dirs: list[Path], work: Path) -> Nodes:
    """Start node 0 and node 1 with ``launcher``; both must exit 0."""
    port = _free_port()
    launch = [LAUNCHERS[launcher].format(rank=rank, port=port).split() for rank in range(len(dirs))]
    commands = [[sys.executable, "-m", *args, *train_args] for args in launch]
    return Nodes(launcher, dirs, _run(commands, dirs, work))


def _run(commands: list[list[str]], dirs: list[Path], work: Path) -> list[str]:
    """Start every command in its folder, wait for all (bounded), stop what is left; all must
    exit 0. Returns their logs."""
    env = _environment(work / "hf-home")
    logs = [work / f"{d.name}.log" for d in dirs]
    procs: list[subprocess.Popen] = []
    try:
        for command, cwd, log in zip(commands, dirs, logs):
            cwd.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as out:
                started = subprocess.Popen(
                    command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            procs.append(started)
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):  # one failed: give the others 30 s
                deadline = min(deadline, time.monotonic() + 30)
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                _stop(p)
    texts = [log.read_text(errors="replace") for log in logs]
    tails = "\n".join(f"--- {d.name} ---\n{text[-3000:]}" for d, text in zip(dirs, texts))
    assert [p.returncode for p in procs] == [0] * len(procs), tails
    return texts


def _stop(launcher: subprocess.Popen) -> None:
    """SIGTERM first: torchrun then stops its workers (each in a session of its own); SIGKILL after 20 s."""
    os.killpg(launcher.pid, signal.SIGTERM)
    try:
        launcher.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def _losses(run_dir: Path) -> torch.Tensor:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    return torch.tensor([m["loss"] for m in metrics])


def _assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4, msg=key)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=8)


@pytest.fixture(scope="module")
def one_process(dataset, tmp_path_factory) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference: one process at the global batch (4), 6 steps."""
    work = tmp_path_factory.mktemp("one")
    _run([[sys.executable, *_train_args(dataset, 6, batch=4)]], [work / "one"], work)
    return _losses(work / "one" / "style-run"), load_file(str(work / "one" / "style.safetensors"))


@pytest.fixture(scope="module", params=list(LAUNCHERS))
def two_nodes(request, dataset, tmp_path_factory) -> Nodes:
    work = tmp_path_factory.mktemp(request.param)
    return _run_nodes(request.param, _train_args(dataset, 6), [work / "node0", work / "node1"], work)


def test_two_nodes_train_like_one_process_at_the_same_global_batch(two_nodes, one_process):
    run_dir = two_nodes.dirs[two_nodes.writer] / "style-run"
    torch.testing.assert_close(_losses(run_dir), one_process[0], rtol=1e-4, atol=1e-6)
    adapter = load_file(str(two_nodes.dirs[two_nodes.writer] / "style.safetensors"))
    _assert_same_adapter(adapter, one_process[1])
    assert (run_dir / "checkpoints" / "step-000006" / "state.json").is_file()


def test_only_the_rank_0_node_writes_files(two_nodes):
    """With a static rendezvous (torchrun --node-rank, accelerate --machine_rank) that is node 0;
    c10d ignores --node-rank and ranks the nodes itself, so there it is whichever node it chose."""
    if two_nodes.launcher != "torchrun-c10d":
        assert two_nodes.writer == 0
    writer, other = two_nodes.dirs[two_nodes.writer], two_nodes.dirs[1 - two_nodes.writer]
    assert (writer / "style.safetensors").is_file() and (writer / "style-run" / "config.toml").is_file()
    assert [p for p in other.rglob("*") if p.is_file()] == []


def test_other_nodes_create_not_even_an_empty_run_directory(two_nodes):
    """So --output need only be writable on the rank-0 node."""
    other = two_nodes.dirs[1 - two_nodes.writer]
    assert list(other.iterdir()) == []


def test_a_multi_node_run_resumes_from_a_checkpoint_copied_to_every_node(dataset, one_process, tmp_path):
    """3 steps, the run directory copied to node 1 (every process reads the checkpoint), then
    resumed to 6: the same losses and adapter as 6 uninterrupted steps on one process."""
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    _run_nodes("torchrun-static", _train_args(dataset, 3), dirs, tmp_path)
    shutil.copytree(dirs[0] / "style-run", dirs[1] / "style-run", dirs_exist_ok=True)
    resumed = _run_nodes(
        "torchrun-static", [*_train_args(dataset, 6), "--resume", "style-run"], dirs, tmp_path
    )
    assert "resumed from style-run/checkpoints/step-000003 at step 3" in resumed.logs[0]
    torch.testing.assert_close(_losses(dirs[0] / "style-run"), one_process[0], rtol=1e-4, atol=1e-6)
    _assert_same_adapter(load_file(str(dirs[0] / "style.safetensors")), one_process[1])
