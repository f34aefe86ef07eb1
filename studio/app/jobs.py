"""Training jobs: a queue in the database and one worker process per device slot.

The app never trains in its own process. ``JobManager`` has device slots (one per GPU, or
one ``cpu`` slot): it starts ``studio.app.worker`` for the oldest queued jobs while their
slots are free (``schedule``), with ``CUDA_VISIBLE_DEVICES`` naming the job's GPUs (a job
that asks for several runs its worker through torchrun, one process per GPU). It watches the
workers and turns one that died without reporting (a crash, ``kill -9``, out of memory)
into an *interrupted* job that can be resumed from its last checkpoint. Jobs found
*running* when the app starts belonged to an app that is gone: they are interrupted too.
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


def device_slots(gpus: int | None = None) -> list[str]:
    """Slots for ``--gpus``: the first ``gpus`` visible CUDA devices (all by default), each named
    as ``CUDA_VISIBLE_DEVICES`` names it to a child process; without CUDA, ``cpu`` slots (one by
    default)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus is not None and gpus < 1:
        raise StudioError("--gpus must be at least 1")
    if not count:
        return ["cpu"] if (gpus or 1) == 1 else [f"cpu{i}" for i in range(gpus)]
    if gpus is not None and gpus > count:
        raise StudioError(
            f"--gpus {gpus} but {count} GPU(s) are visible", hint=f"use --gpus {count} or fewer"
        )
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in mask.split(",") if d.strip()] if mask else [str(i) for i in range(count)]
    return names[: gpus or count]


def schedule(queued: list[Job], free: list[str]) -> list[tuple[Job, list[str]]]:
    """Which queued jobs (oldest first) start now, on which free slots.

    First come, first served: a job that needs more slots than are free waits, and the jobs
    behind it wait too, so a multi-GPU job is never starved by single-GPU ones.
    """
    plan, free = [], list(free)
    for job in queued:
        if job.gpus > len(free):
            break
        plan.append((job, free[: job.gpus]))
        free = free[job.gpus :]
    return plan


def _is_gpu(slot: str) -> bool:
    return not slot.startswith("cpu")


class JobManager:
    def __init__(
        self, ws: Workspace, db: Database, poll_seconds: float = 0.5, slots: list[str] | None = None
    ):
        self.ws, self.db, self.poll = ws, db, poll_seconds
        self.slots = slots or ["cpu"]
        self._running: dict[int, tuple[subprocess.Popen, list[str]]] = {}  # job id -> worker, slots
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="studio-jobs", daemon=True)
        self._thread.start()

    # Public actions (the UI and the API call these).
    def submit(self, name: str, config: TrainConfig, gpus: int = 1) -> int:
        """Queue ``config``; ``gpus``: device slots the job trains on at once (data parallel)."""
        config.validate()
        if not 1 <= gpus <= len(self.slots):
            raise StudioError(
                f"the job asks for {gpus} GPU(s); this app has {len(self.slots)} slot(s)",
                hint=f"choose 1 to {len(self.slots)}, or start the app with more --gpus",
            )
        stem = self._free_name(safe_name(name, "adapter"))
        job_id = self.db.add_job(stem, {}, status="new", gpus=gpus)  # not picked up before its config is in
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
        with self._lock:  # a torchrun job reads the flag: its processes must stop at the same step
            proc, slots = self._running.get(job_id, (None, []))
            if proc is not None and len(slots) == 1:
                proc.send_signal(signal.SIGTERM)
        return self.db.job(job_id)

    def save_now(self, job_id: int) -> Job:
        """Ask the running job for a checkpoint at its current step (written between two steps)."""
        job = self.db.job(job_id)
        if not self.db.set_status_if(job_id, ("running",), save_requested=1):
            raise StudioError(f"job #{job_id} is {job.status}, not running; only a running job saves now")
        return self.db.job(job_id)

    def resume(self, job_id: int) -> Job:
        """Queue a stopped, interrupted or failed job again: from its last checkpoint, or from
        step 0 when it has none (the worker says which)."""
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
            running = dict(self._running)
        for proc, _ in running.values():
            proc.send_signal(signal.SIGINT)
        for job_id, (proc, _) in running.items():
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
            for job_id, (proc, _) in list(self._running.items()):
                if proc.poll() is not None:
                    self._reap(proc, job_id)
                    del self._running[job_id]
            busy = {slot for _, slots in self._running.values() for slot in slots}
            queued = []
            for job in self.db.queued():
                if job.gpus <= len(self.slots):
                    queued.append(job)
                else:  # queued by an app with more GPUs: it would hold up the queue for ever
                    self.db.set_status_if(job.id, ("queued",), status="failed", finished=time.time(),
                                          error=f"it asks for {job.gpus} GPU(s); this app has {len(self.slots)} "
                                          "(start it with more --gpus, or train again with fewer)")  # fmt: skip
            for job, slots in schedule(queued, [s for s in self.slots if s not in busy]):
                self._start(job, slots)

    def _reap(self, proc: subprocess.Popen, job_id: int) -> None:
        code = proc.returncode
        reason = (
            f"the worker was killed by signal {-code}" if code < 0 else f"the worker exited with code {code}"
        )
        self.db.set_status_if(
            job_id, ("running", "queued"), status="interrupted", error=reason, finished=time.time()
        )

    def command(self, job: Job, slots: list[str]) -> list[str]:
        """The worker's command line: one process, or torchrun with one process per slot."""
        worker = ["-m", "studio.app.worker", str(self.ws.root), str(job.id)]
        if len(slots) == 1:
            return [sys.executable, *worker]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={len(slots)}",
                *worker]  # fmt: skip

    def _start(self, job: Job, slots: list[str]) -> None:
        log = self.log_path(job.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error",
               "STUDIO_APP_PID": str(os.getpid()),
               "CUDA_VISIBLE_DEVICES": ",".join(s for s in slots if _is_gpu(s))}  # fmt: skip
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.command(job, slots),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._running[job.id] = (proc, slots)
        self.db.update_job(job.id, pid=proc.pid, gpu=",".join(slots))
