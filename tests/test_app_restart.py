"""Crash and restart: a killed worker or a stopped app leaves a resumable job, never a lost one."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from test_app_support import AppProcess, alive, wait_for

from studio.app.progress import read_losses
from studio.samples import make_demo_dataset

pytestmark = pytest.mark.slow
OPTIONS = {"steps": 10, "resolution": 64, "batch_size": 1, "sample_every": 0, "checkpoint_every": 2,
           "keep_checkpoints": 10}  # fmt: skip


def status(client, job_id: int) -> dict:
    return client.predict(job_id, api_name="/job_status")


def until(client, job_id: int, check, what: str, timeout: float = 300) -> dict:
    def ready():
        current = status(client, job_id)
        return current if check(current) else None

    return wait_for(ready, timeout, what, every=0.5)


def resumed_steps(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"resumed from \S+ at step (\d+)", log)]


def test_kill_worker_then_restart_app_and_resume_from_last_checkpoint(tmp_path):
    ws = tmp_path / "ws"
    make_demo_dataset(ws / "datasets" / "shapes", count=4)
    app = AppProcess(ws)
    try:
        client = app.client()
        job = client.predict("shapes", "ink", "Quick demo (embedded model)", "default", "inkstyle",
                             json.dumps(OPTIONS), api_name="/train")["id"]  # fmt: skip

        # 1. kill -9 the worker after its first checkpoint: the job shows interrupted, the app stays up.
        running = until(client, job, lambda s: s["step"] >= 3, "step 3")
        os.kill(running["pid"], signal.SIGKILL)
        killed = until(client, job, lambda s: s["status"] == "interrupted", "the job marked interrupted", 60)
        assert "killed by signal 9" in killed["error"]
        assert [j["id"] for j in client.predict(api_name="/list_jobs")] == [job]  # the app still answers

        # Resume: it continues from the last checkpoint, losing at most one checkpoint interval.
        client.predict(job, api_name="/resume_job")
        until(
            client,
            job,
            lambda s: s["status"] == "running" and s["step"] >= killed["step"] + 2,
            "progress after resume",
        )
        log = (ws / "jobs" / str(job) / "log.txt").read_text()
        (first,) = resumed_steps(log)
        assert first % 2 == 0 and 0 < killed["step"] - first <= OPTIONS["checkpoint_every"]

        # 2. Stop the app itself mid-job (SIGTERM: no clean-up code runs in it).
        before_stop = status(client, job)
        worker = before_stop["pid"]
        app.stop(signal.SIGTERM)
        wait_for(lambda: not alive(worker), 60, "the orphaned worker to stop")
    finally:
        app.stop()

    # 3. A new app on the same workspace lists the job as interrupted and resumes it to the end.
    app = AppProcess(ws)
    try:
        client = app.client()
        (listed,) = client.predict(api_name="/list_jobs")
        assert (listed["id"], listed["status"]) == (job, "interrupted")
        assert listed["step"] >= before_stop["step"]
        client.predict(job, api_name="/resume_job")
        done = until(
            client, job, lambda s: s["status"] not in ("queued", "running"), "the resumed job to finish"
        )
        assert (done["status"], done["step"], done["total"], done["adapter"]) == ("finished", 10, 10, "ink")
    finally:
        app.stop()
    log = (ws / "jobs" / str(job) / "log.txt").read_text()
    first, second = resumed_steps(log)
    assert second >= before_stop["step"] - OPTIONS["checkpoint_every"] and second > first
    assert [step for step, _ in read_losses(ws / "jobs" / str(job) / "run")] == list(range(1, 11))
    assert (ws / "adapters" / "ink.safetensors").is_file()
