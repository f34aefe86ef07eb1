"""Crash and restart: a killed worker or a stopped app leaves a resumable job, never a lost one.

The job is long (100,000 steps: it never finishes here): every check waits for a step count,
so the test does not depend on how fast the machine trains.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from test_app_support import AppProcess, alive, wait_for

from studio.app.db import Database
from studio.app.progress import read_losses
from studio.samples import make_demo_dataset

pytestmark = pytest.mark.slow
EVERY = 2  # checkpoint interval
OPTIONS = {"steps": 100_000, "resolution": 64, "batch_size": 1, "sample_every": 0, "checkpoint_every": EVERY,
           "keep_checkpoints": 3}  # fmt: skip


def until(client, job_id: int, check, what: str, timeout: float = 300) -> dict:
    def ready():
        current = client.predict(job_id, api_name="/job_status")
        return current if check(current) else None

    return wait_for(ready, timeout, what, every=0.3)


def resumed_steps(ws, job_id: int) -> list[int]:
    log = (ws / "jobs" / str(job_id) / "log.txt").read_text()
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

        # Resume continues from the last checkpoint, losing at most one checkpoint interval
        # (the checkpoint is written just before its step is reported, so it may be one ahead).
        client.predict(job, api_name="/resume_job")
        wait_for(lambda: resumed_steps(ws, job), 300, "the resume")
        (first,) = resumed_steps(ws, job)
        assert first % EVERY == 0 and -1 <= killed["step"] - first <= EVERY

        # 2. Stop the app itself mid-job (SIGTERM: no clean-up code runs in it).
        before_stop = until(client, job, lambda s: s["step"] >= first + 3, "progress after the resume")
        app.stop(signal.SIGTERM)
        wait_for(lambda: not alive(before_stop["pid"]), 60, "the orphaned worker to stop")
    finally:
        app.stop()

    # 3. A new app on the same workspace lists the job as interrupted, and resumes it.
    app = AppProcess(ws)
    try:
        client = app.client()
        (listed,) = client.predict(api_name="/list_jobs")
        assert (listed["id"], listed["status"]) == (job, "interrupted")
        assert listed["step"] >= before_stop["step"]
        client.predict(job, api_name="/resume_job")
        wait_for(lambda: len(resumed_steps(ws, job)) == 2, 300, "the second resume")
        second = resumed_steps(ws, job)[1]
        assert second % EVERY == 0 and -1 <= listed["step"] - second <= EVERY
        resumed = until(client, job, lambda s: s["step"] >= second + 1, "progress after the restart")
        assert resumed["status"] == "running"
    finally:
        app.stop()  # Ctrl-C: the app hands its running job back as interrupted before it exits
    final = Database(ws / "studio.db").job(job)
    assert final.status == "interrupted"  # with a checkpoint of the step it was at
    assert final.error.startswith("the app stopped while the job was running; checkpoint saved at step ")
    assert not alive(resumed["pid"]) and "Traceback" not in (ws / "jobs" / str(job) / "log.txt").read_text()
    steps = [step for step, _ in read_losses(ws / "jobs" / str(job) / "run")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > second  # no hole in the loss curve
