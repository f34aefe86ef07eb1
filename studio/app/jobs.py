"""Training jobs: a queue in the database and one worker process at a time.

The app never trains in its own process. ``JobManager`` starts ``studio.app.worker`` for
the oldest queued job, watches it, and turns a worker that died without reporting (a
crash, ``kill -9``, out of memory) into an *interrupted* job that can be resumed from its
last checkpoint. Jobs found *running* when the app starts belonged to an app that is gone:
they are interrupted too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from studio.app.db import ACTIVE, RESUMABLE, Database, Job
from studio.app.workspace import Workspace, safe_name
from studio.config import TrainConfig
from studio.errors import StudioError


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _is_worker(pid: int) -> bool:
    try:
        return b"studio.app.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class JobManager:
    def __init__(self, ws: Workspace, db: Database, poll_seconds: float = 0.5):
        self.ws, self.db, self.poll = ws, db, poll_seconds
        self._proc: subprocess.Popen | None = None
        self._job_id: int | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="studio-jobs", daemon=True)
        self._thread.start()

    # Public actions (the UI and the API call these).
    def submit(self, name: str, config: TrainConfig) -> int:
        config.validate()
        stem = self._free_name(safe_name(name, "adapter"))
        job_id = self.db.add_job(stem, {}, status="new")  # not picked up before its config is in
        config = dataclasses.replace(
            config,
            output=str(self.ws.adapters / f"{stem}.safetensors"),
            run_dir=str(self.ws.jobs / str(job_id) / "run"),
            format="both",
        )
        self.db.update_job(job_id, config=json.dumps(config.to_dict()), status="queued")
        self.wake()
        return job_id

    def stop(self, job_id: int) -> Job:
        job = self.db.job(job_id)
        if self.db.set_status_if(job_id, ("queued",), status="stopped", error="cancelled before it started"):
            return self.db.job(job_id)
        if job.status != "running":
            raise StudioError(f"job #{job_id} is {job.status}, not running")
        self.db.update_job(job_id, stop_requested=1)
        with self._lock:
            if self._proc is not None and self._job_id == job_id:
                self._proc.send_signal(signal.SIGTERM)
        return self.db.job(job_id)

    def resume(self, job_id: int) -> Job:
        job = self.db.job(job_id)
        if not self.db.set_status_if(
            job_id, RESUMABLE, status="queued", resume=1, stop_requested=0, error=None, finished=None
        ):
            raise StudioError(
                f"job #{job_id} is {job.status}; only stopped, interrupted or failed jobs resume"
            )
        self.wake()
        return self.db.job(job_id)

    def log_path(self, job_id: int) -> Path:
        return self.ws.jobs / str(job_id) / "log.txt"

    def wake(self) -> None:
        self._tick()

    def close(self) -> None:
        """App shutdown: the running job becomes interrupted (resumable), queued ones stay queued."""
        self._closed.set()
        with self._lock:
            proc, job_id = self._proc, self._job_id
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._reap(proc, job_id)

    # Internals.
    def _free_name(self, stem: str) -> str:
        taken = {row.name for row in self.db.adapters()} | {
            job.name for job in self.db.jobs() if job.status in ACTIVE or job.status in RESUMABLE
        }
        name, n = stem, 1
        while name in taken or (self.ws.adapters / f"{name}.safetensors").exists():
            n += 1
            name = f"{stem}-{n}"
        return name

    def _recover(self) -> None:
        for job in self.db.jobs():
            if job.status == "new":  # the app died between creating the job and queueing it
                self.db.set_status_if(
                    job.id, ("new",), status="failed", error="the app stopped while creating it"
                )
            if job.status != "running":
                continue
            if _alive(job.pid) and _is_worker(job.pid):
                deadline = time.time() + 5  # it notices its app is gone within a second
                while _alive(job.pid) and time.time() < deadline:
                    time.sleep(0.2)
                if _alive(job.pid):
                    os.kill(job.pid, signal.SIGKILL)
            self.db.set_status_if(
                job.id, ("running",), status="interrupted", error="the app stopped while the job was running"
            )

    def _loop(self) -> None:
        while not self._closed.wait(self.poll):
            try:
                self._tick()
            except Exception as exc:  # keep supervising whatever happens; the log shows it
                print(f"studio: job supervisor: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _tick(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            if self._proc is not None and self._proc.poll() is not None:
                self._reap(self._proc, self._job_id)
                self._proc = self._job_id = None
            if self._proc is None:
                job = self.db.next_queued()
                if job is not None:
                    self._start(job)

    def _reap(self, proc: subprocess.Popen, job_id: int | None) -> None:
        if job_id is None:
            return
        code = proc.returncode
        reason = (
            f"the worker was killed by signal {-code}" if code < 0 else f"the worker exited with code {code}"
        )
        self.db.set_status_if(
            job_id, ("running", "queued"), status="interrupted", error=reason, finished=time.time()
        )

    def _start(self, job: Job) -> None:
        log = self.log_path(job.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error"}
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "studio.app.worker", str(self.ws.root), str(job.id)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._job_id = job.id
        self.db.update_job(job.id, pid=self._proc.pid)
