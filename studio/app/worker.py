"""The training worker: one process per job, so a crash or a kill never takes the app down.

``python -m studio.app.worker WORKSPACE JOB_ID`` reads the job's ``TrainConfig`` from the
database, trains with ``studio.training.recipe.train`` and reports every step back to the
database; the app only reads. A stop request (SIGTERM or the job's ``stop_requested``
flag) and the app going away (parent gone) end the run cleanly between two steps; the
last checkpoint stays for a resume.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from studio.app.db import Database
from studio.app.library import register_trained
from studio.app.workspace import Workspace
from studio.config import TrainConfig
from studio.errors import StopTraining, StudioError


class JobStop(StopTraining):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Watch:
    """Stop flags set by signals and a thread that notices the app (our parent) vanishing."""

    def __init__(self, db: Database, job_id: int):
        self.db, self.job_id = db, job_id
        self.parent = os.getppid()
        self.stop: JobStop | None = None
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)  # the app shutting down (or Ctrl-C in its terminal)
        threading.Thread(target=self._watch_parent, daemon=True).start()

    def _on_term(self, *_: object) -> None:
        self.stop = JobStop("stopped", "stopped by the user")

    def _on_int(self, *_: object) -> None:
        self.stop = JobStop("interrupted", "the app stopped while the job was running")

    def _watch_parent(self) -> None:
        while self.stop is None:
            if os.getppid() != self.parent:
                self.stop = JobStop("interrupted", "the app stopped while the job was running")
            time.sleep(0.5)

    def check(self) -> None:
        if self.stop is None and self.db.job(self.job_id).stop_requested:
            self.stop = JobStop("stopped", "stopped by the user")
        if self.stop is not None:
            raise self.stop


def run_job(ws: Workspace, job_id: int) -> int:
    db = Database(ws.db_path)
    job = db.job(job_id)
    watch = _Watch(db, job_id)
    config = TrainConfig.from_dict(job.config_dict)
    run_dir = config.effective_run_dir
    from studio.training.checkpoint import list_checkpoints

    if job.resume and list_checkpoints(run_dir):
        config.resume = str(run_dir)
        print(f"resuming job #{job_id} from {list_checkpoints(run_dir)[-1].name}", flush=True)
    if not db.set_status_if(
        job_id, ("queued", "running"), status="running", pid=os.getpid(), started=time.time(),
        error=None, segment_step=None, segment_time=None, stop_requested=0,
    ):  # fmt: skip
        return 0  # cancelled before it started

    def on_step(event) -> None:
        values = {"step": event.step, "total": event.total_steps, "epoch": event.epoch, "loss": event.loss}
        if db.job(job_id).segment_step is None:
            values.update(segment_step=event.step, segment_time=time.time())
        db.update_job(job_id, **values)
        watch.check()

    from studio.training.recipe import train

    try:
        result = train(config, on_step=on_step)
        if result.stopped and watch.stop is not None:  # the run saved a checkpoint at this step
            note = f"{watch.stop.reason}; checkpoint saved at step {result.steps}"
            db.set_status_if(job_id, ("running",), status=watch.stop.status, finished=time.time(), error=note)
            print(note, flush=True)
            return 0
        adapter_id = register_trained(ws, db, db.job(job_id), result.outputs, result.run_dir)
        db.set_status_if(job_id, ("running",), status="finished", finished=time.time(), adapter_id=adapter_id)
        print(f"finished: {', '.join(map(str, result.outputs))}", flush=True)
    except StudioError as exc:
        db.set_status_if(job_id, ("running",), status="failed", finished=time.time(), error=str(exc))
        print(f"error: {exc}", flush=True)
    except Exception as exc:  # a bug: keep the traceback in the job log, a summary in the table
        traceback.print_exc()
        db.set_status_if(
            job_id, ("running",), status="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m studio.app.worker WORKSPACE JOB_ID", file=sys.stderr)
        return 2
    return run_job(Workspace.open(Path(args[0])), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
