"""Load: concurrent generations while a job trains, queue limits, a responsive app, flat memory."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client.utils import QueueError
from test_app_support import AppProcess, alive, random_adapter, wait_for

from studio.app import library
from studio.app.db import Database
from studio.app.workspace import Workspace
from studio.samples import make_demo_dataset

pytestmark = pytest.mark.slow
TRAIN = {"steps": 200, "resolution": 64, "batch_size": 1, "sample_every": 0, "checkpoint_every": 0}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def generate(client, adapters: list[dict], seed: int = 0):
    return client.predict("a circle", json.dumps(adapters), "", seed, 1, 5.0, 32, 32, "euler-a", "default",
                          api_name="/generate")  # fmt: skip


def _status_while_busy(client, job: int) -> tuple[dict, float]:
    """Gradio's queue limit is global: while it is full, every request (status too) is told so,
    and the app answers as soon as a place frees up."""
    t0 = time.time()
    while True:
        try:
            return client.predict(job, api_name="/job_status"), time.time() - t0
        except QueueError:
            if time.time() - t0 > 10:
                raise
            time.sleep(0.2)


def test_generations_during_training_queue_limit_and_memory(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    make_demo_dataset(ws.datasets / "shapes", count=4)
    db = Database(ws.db_path)
    for seed, name in ((1, "ink"), (2, "neon")):  # two adapters in the library, the way a bake adds one
        source = random_adapter(tmp_path / f"{name}.safetensors", seed)
        shutil.copyfile(source, ws.adapters / source.name)
        library.register_file(ws, db, ws.adapters / source.name, "imported")
    app = AppProcess(ws.root, "--queue-size", "8")
    try:
        client = app.client()
        preset = "Quick demo (embedded model)"
        job = client.predict("shapes", "busy", preset, "default", "", json.dumps(TRAIN), api_name="/train")[
            "id"
        ]
        queued = client.predict(
            "shapes", "later", preset, "default", "", json.dumps(TRAIN), api_name="/train"
        )
        assert queued["status"] == "queued"  # one job at a time
        wait_for(lambda: client.predict(job, api_name="/job_status")["step"] >= 1, 300, "training to start")

        # 20 concurrent generate calls: each finishes or is told the queue is full.
        def call(i: int) -> str:
            try:
                return generate(app.client(), [{"name": "ink", "weight": (i % 5) / 2}], seed=i)
            except Exception as exc:  # gradio_client's QueueError
                return f"error: {exc}"

        started = time.time()
        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(call, i) for i in range(20)]
            time.sleep(1.0)
            status, answer_seconds = _status_while_busy(client, job)
            results = [f.result(timeout=600) for f in futures]
        images = [r for r in results if not r.startswith("error:")]
        refused = [r for r in results if r.startswith("error:")]
        assert all("Queue is full" in r for r in refused), refused
        assert len(images) >= 8 and all(Path(p).stat().st_size > 0 for p in images)
        assert status["status"] == "running" and answer_seconds < 10
        print(f"20 concurrent generations: {len(images)} done, {len(refused)} queue-full, "
              f"{time.time() - started:.1f}s; job status answered in {answer_seconds:.2f}s")  # fmt: skip

        # Stop: the queued job is cancelled, the running one stops and its worker exits.
        assert client.predict(queued["id"], api_name="/stop_job")["status"] == "stopped"
        pid = client.predict(job, api_name="/job_status")["pid"]
        client.predict(job, api_name="/stop_job")
        stopped = wait_for(
            lambda: (s := client.predict(job, api_name="/job_status"))["status"] != "running" and s,
            120,
            "the stop",
        )
        # Stop saves a checkpoint at the step it stopped on, so Resume loses nothing.
        assert stopped["status"] == "stopped"
        assert stopped["error"] == f"stopped by the user; checkpoint saved at step {stopped['step']}"
        wait_for(lambda: not alive(pid), 60, "the worker to exit")

        # Resident memory stays flat over 100 generations switching adapters and weights.
        blends = [
            [{"name": "ink", "weight": 0.5}],
            [{"name": "neon", "weight": -1.0}],
            [{"name": "ink", "weight": 1.5}, {"name": "neon", "weight": 0.3}],
            [{"name": "neon", "weight": 2.0, "unet": 0.5}, {"name": "ink", "enabled": False}],
        ]
        for i in range(12):
            generate(client, blends[i % 4], seed=i)
        before = rss_kib(app.proc.pid)
        for i in range(100):
            generate(client, blends[i % 4], seed=i)
        after = rss_kib(app.proc.pid)
        print(f"app RSS over 100 generations: {before / 1024:.0f} -> {after / 1024:.0f} MiB")
        assert after < before * 1.10
    finally:
        app.stop()
