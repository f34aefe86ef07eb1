"""The training worker: one process per job, so a crash or a kill never takes the app down.

``python -m studio.app.worker WORKSPACE JOB_ID`` reads the job's ``TrainConfig`` from the
database, trains with ``studio.training.recipe.train`` and reports every step back to the
database; the app only reads. A stop request (SIGTERM or the job's ``stop_requested``
flag) and the app going away end the run cleanly between two steps with a checkpoint at
that step; ``save_requested`` asks for a checkpoint now and training goes on. In a torchrun
job (several GPUs) rank 0 reads the requests and every process follows its decision.
"""

from __future__ import annotations

import dataclasses
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

STOP, SAVE = "stop", "save"  # studio.training.hooks' answers (imported late: signals come first)


class JobStop(StopTraining):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Watch:
    """Stop flags set by signals and a thread that notices the app vanishing.

    The app is our parent, or (a torchrun job) the parent of our launcher: ``STUDIO_APP_PID``.
    """

    def __init__(self, db: Database, job_id: int):
        self.db, self.job_id = db, job_id
        self.parent = os.getppid()
        self.app = int(os.environ.get("STUDIO_APP_PID") or 0)
        self.stop: JobStop | None = None
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)  # the app shutting down (or Ctrl-C in its terminal)
        threading.Thread(target=self._watch_parent, daemon=True).start()

    def _on_term(self, *_: object) -> None:
        self.stop = JobStop("stopped", "stopped by the user")

    def _on_int(self, *_: object) -> None:
        self.stop = JobStop("interrupted", "the app stopped while the job was running")

    def _app_gone(self) -> bool:
        if self.app and self.app != self.parent:
            try:
                os.kill(self.app, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        return os.getppid() != self.parent

    def _watch_parent(self) -> None:
        while self.stop is None:
            if self._app_gone():
                self.stop = JobStop("interrupted", "the app stopped while the job was running")
            time.sleep(0.5)

    def decide(self) -> str | None:
        """What the app asks of the job now: ``"stop"``, ``"save"`` (a checkpoint now) or nothing."""
        job = self.db.job(self.job_id)
        if self.stop is None and job.stop_requested:
            self.stop = JobStop("stopped", "stopped by the user")
        if self.stop is not None:
            return STOP
        if job.save_requested:
            self.db.update_job(self.job_id, save_requested=0)
            return SAVE
        return None


def _agreed(answer: str | None) -> str | None:
    """Every process of a torchrun job does what rank 0 decided (they stop at the same step)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return answer
    box = [answer]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _start_point(db: Database, job_id: int, config: TrainConfig, resume: bool, main: bool) -> TrainConfig:
    """A resumed job continues from its newest checkpoint; with none, it starts over from step 0."""
    from studio.training.checkpoint import list_checkpoints
    from studio.training.metrics import trim_metrics

    run_dir = config.effective_run_dir
    found = list_checkpoints(run_dir)
    if resume and found:
        print(f"resuming job #{job_id} from {found[-1].name}", flush=True)
        return dataclasses.replace(config, resume=str(run_dir))
    if resume:
        print(f"job #{job_id} has no checkpoint: starting over from step 0", flush=True)
        if main:
            trim_metrics(run_dir, 0)  # the curve of the attempt before is not this run's
            db.update_job(job_id, step=0, loss=None)
    return config


def run_job(ws: Workspace, job_id: int) -> int:
    main = os.environ.get("RANK", "0") == "0"  # a torchrun job: rank 0 alone reports
    db = Database(ws.db_path)
    job = db.job(job_id)
    watch = _Watch(db, job_id)
    config = _start_point(db, job_id, TrainConfig.from_dict(job.config_dict), bool(job.resume), main)
    launcher = {} if "LOCAL_RANK" in os.environ else {"pid": os.getpid()}  # torchrun's pid is the app's
    if main and not db.set_status_if(
        job_id, ("queued", "running"), status="running", started=time.time(), error=None, segment_step=None,
        segment_time=None, stop_requested=0, save_requested=0, **launcher,
    ):  # fmt: skip
        return 0  # cancelled before it started
    from studio.training.checkpoint import list_checkpoints

    asked_at: int | None = None  # a "save now" passed on at this step; later steps look for its checkpoint

    def newest_checkpoint() -> int | None:
        found = list_checkpoints(config.effective_run_dir)
        return int(found[-1].name.split("-")[1]) if found else None

    def on_step(event) -> str | None:
        nonlocal asked_at
        if main:
            values = {
                "step": event.step,
                "total": event.total_steps,
                "epoch": event.epoch,
                "loss": event.loss,
            }
            if db.job(job_id).segment_step is None:
                values.update(segment_step=event.step, segment_time=time.time())
            if asked_at is not None or event.checkpoint is not None:
                newest = newest_checkpoint()
                if newest is not None and newest >= (asked_at or 0):
                    values["saved_step"], asked_at = newest, None
            db.update_job(job_id, **values)
        answer = _agreed(watch.decide() if main else None)
        if answer == STOP:
            raise watch.stop or JobStop("stopped", "stopped by the user")
        if answer == SAVE:
            asked_at = event.step
        return answer

    from studio.training.recipe import train

    try:
        result = train(config, on_step=on_step)
        if not main:
            return 0
        if result.stopped and watch.stop is not None:  # the run saved a checkpoint at this step
            note = f"{watch.stop.reason}; checkpoint saved at step {result.steps}"
            db.set_status_if(job_id, ("running",), status=watch.stop.status, finished=time.time(), error=note,
                             saved_step=result.steps)  # fmt: skip
            print(note, flush=True)
            return 0
        adapter_id = register_trained(ws, db, db.job(job_id), result.outputs, result.run_dir)
        db.set_status_if(job_id, ("running",), status="finished", finished=time.time(), adapter_id=adapter_id,
                         saved_step=result.steps)  # fmt: skip
        print(f"finished: {', '.join(map(str, result.outputs))}", flush=True)
    except StudioError as exc:
        print(f"error: {exc}", flush=True)
        if main:
            db.set_status_if(job_id, ("running",), status="failed", finished=time.time(), error=str(exc))
    except Exception as exc:  # a bug: keep the traceback in the job log, a summary in the table
        traceback.print_exc()
        if main:
            db.set_status_if(
                job_id,
                ("running",),
                status="failed",
                finished=time.time(),
                error=f"{type(exc).__name__}: {exc}",
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
