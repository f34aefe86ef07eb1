"""What the Train tab and the API ask of training jobs: submit one, list them, say where each stands.

``submit_job`` turns a dataset choice, a preset and option overrides into a validated
``TrainConfig`` queued with the ``JobManager``. The rest reads the database only: the
jobs table, the job picker, one job's status as a record, the line that tells the user
what became of the job they started/stopped, and which job the progress panel follows.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

from studio.app import datasets
from studio.app.context import AppContext
from studio.app.db import ACTIVE, Database, Job
from studio.app.messages import shown_paths
from studio.app.models import config_choices, resolve_base, resolve_config
from studio.app.progress import job_view
from studio.config import TrainConfig
from studio.presets import get_preset
from studio.training.checkpoint import list_checkpoints

DEFAULT_PRESET = "Quick demo (embedded model)"
JOB_HEADERS = ["job", "name", "status", "progress", "gpu", "created", "message"]


def submit_job(ctx: AppContext, dataset: str, name: str, preset: str, base: str, hub_id: str,
               trigger: str, options: dict[str, Any], gpus: int = 1, base_config: str = "") -> int:  # fmt: skip
    """Shared by the Start button and the ``/train`` API endpoint; ``gpus``: slots the job trains on;
    ``base_config``: a config choice (``models.config_choices``) for a single-file ``base``."""
    folder = datasets.dataset_folder(ctx.ws, dataset)
    values = {**dataclasses.asdict(get_preset(preset).apply()), **options}
    values.update(
        data=str(folder), base=resolve_base(ctx.ws, base, hub_id), trigger=(trigger or "").strip() or None
    )
    if not (hub_id or "").strip() and config_choices(ctx.ws, base)[0]:
        values["base_config"] = resolve_config(ctx.ws, base_config)
    config = TrainConfig.from_dict(
        {k: v for k, v in values.items() if k not in ("output", "run_dir", "resume")}
    )
    return ctx.jobs.submit(name or folder.name, config, int(gpus or 1))


def queue_positions(db: Database) -> dict[int, int]:
    """Queued job id -> its place in the queue (1 starts next)."""
    return {job.id: n for n, job in enumerate(db.queued(), 1)}


def queue_text(position: int) -> str:
    return "next in the queue" if position == 1 else f"{position} in the queue"


def jobs_table(db: Database, root: Path) -> list[list[Any]]:
    """The jobs table, newest first; errors name files relative to the workspace ``root``."""
    rows, places = [], queue_positions(db)
    for job in db.jobs():
        progress = f"{job.step}/{job.total}" if job.total else ""
        if job.id in places:
            progress = queue_text(places[job.id])
        created = datetime.fromtimestamp(job.created).strftime("%Y-%m-%d %H:%M")
        gpu = job.gpu if job.status == "running" or job.gpu else ""
        rows.append([job.id, job.name, job.status, progress, gpu or "", created,
                     shown_paths(job.error or "", root)])  # fmt: skip
    return rows


def job_choices(db: Database) -> list[tuple[str, int]]:
    return [(f"#{job.id} {job.name} ({job.status})", job.id) for job in db.jobs()]


def job_status(ctx: AppContext, job_id: int) -> dict[str, Any]:
    """One job as the API returns it: status, progress, ETA, error, adapter."""
    view = job_view(ctx.db, job_id, ctx.jobs.log_path(job_id))
    job = view.job
    return {
        "id": job.id, "name": job.name, "status": job.status, "step": job.step, "total": job.total,
        "epoch": job.epoch, "loss": job.loss, "percent": round(view.percent, 1), "eta_seconds": view.eta_seconds,
        "error": job.error, "pid": job.pid, "adapter": ctx.db.adapter(job.adapter_id).name if job.adapter_id else None,
        "samples": len(view.samples), "text": view.status_text(),
    }  # fmt: skip


def has_checkpoint(job: Job) -> bool:
    config = job.config_dict
    return bool(config) and bool(list_checkpoints(TrainConfig.from_dict(config).effective_run_dir))


def job_message(job: Job, root: Path, position: int | None = None) -> str:
    """The Train tab's line about a job the user acted on, for the status it has now
    (``position``: its place in the queue)."""
    if job.status == "queued":
        place = f" It is {queue_text(position)}." if position else ""
        if not job.resume:
            return f"Queued job #{job.id}.{place}"
        if has_checkpoint(job):
            return f"Job #{job.id} queued to resume from its last checkpoint.{place}"
        return f"Job #{job.id} has no checkpoint yet: queued to start over from step 0.{place}"
    if job.status == "running":
        if job.stop_requested:
            return f"Stopping job #{job.id}…"
        saved = f" Checkpoint saved at step {job.saved_step}." if job.saved_step else ""
        if job.save_requested:
            return f"Job #{job.id}: saving a checkpoint at the current step…"
        return f"Job #{job.id} is running.{saved}"
    if job.status == "finished":
        return f"Job #{job.id} finished: **{job.name}** is in the Library."
    reason = f": {shown_paths(job.error, root)}" if job.error else ""
    return f"Job #{job.id} {job.status}{reason}."


def followed_job(
    db: Database, shown: int | None, shown_status: str | None, pinned: bool = False
) -> int | None:
    """The job the progress panel shows next.

    With none chosen, the running job, else the newest. A shown job that is over gives way
    to the job that runs now (or the next queued one), so the panel follows a queue; a job
    the user picked by hand (``pinned``) after it ended stays shown, and one they picked
    while it ran gives way when it ends (its ``shown_status`` was active).
    """
    jobs = db.jobs()  # newest first
    running = [job for job in jobs if job.status == "running"]
    if shown is None:
        first = running or jobs
        return first[0].id if first else None
    current = next((job for job in jobs if job.id == shown), None)
    if current is None or current.status in ACTIVE or (pinned and shown_status not in ACTIVE):
        return shown
    queued = sorted((job for job in jobs if job.status == "queued"), key=lambda job: job.id)
    return (running or queued or [current])[0].id
