"""What the Train tab shows about a job: progress bar, loss and learning-rate curves, samples, log tail.

Everything is read from what the worker already writes: the job row (step, total, epoch,
loss, the timing of this run segment) and the run folder (``metrics.jsonl``, ``samples/``).
The loss curve is the raw per-step loss, its exponential moving average (what to read: one
step's loss is mostly the noise level it drew) and, when the trainer records it, the
validation loss.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from studio.app.db import Database, Job
from studio.config import TrainConfig

_LOG_BYTES = 16_384
SMOOTHING = 0.9  # EMA weight of the smoothed loss (TensorBoard's slider, debiased the same way)
RAW, SMOOTHED, VALIDATION = "loss (raw)", f"loss (smoothed, EMA {SMOOTHING})", "validation loss"


@dataclass
class JobView:
    job: Job
    percent: float
    eta_seconds: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)
    log_tail: str = ""
    queue_position: int | None = None  # 1: starts next
    curves: list[tuple[int, float, str]] = field(default_factory=list)  # (step, value, series) for the plot
    lrs: list[tuple[int, float]] = field(default_factory=list)

    def status_text(self) -> str:
        j = self.job
        parts = [f"job #{j.id} {j.name}: {j.status}", f"{self.percent:.0f}%"]
        if self.queue_position:
            parts.append(
                "next in the queue" if self.queue_position == 1 else f"{self.queue_position} in the queue"
            )
        if j.gpu and j.status == "running":
            parts.append(f"GPU {j.gpu}" if j.gpu[0].isdigit() else j.gpu)
        if j.total:
            parts.append(f"step {j.step}/{j.total}")
            parts.append(f"epoch {j.epoch + 1}")
        if j.loss is not None:
            parts.append(f"loss {j.loss:.4f}")
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        if j.error and j.status != "finished":
            parts.append(j.error)
        return " · ".join(parts)

    def html(self) -> str:
        colour = {"failed": "#d33", "interrupted": "#d80", "stopped": "#888"}.get(self.job.status, "#2a7")
        return (
            f'<div class="studio-progress" data-status="{self.job.status}" data-percent="{self.percent:.0f}">'
            '<div style="background:#eee;border-radius:6px;height:18px;overflow:hidden">'
            f'<div style="width:{self.percent:.1f}%;background:{colour};height:100%"></div></div>'
            f'<div class="studio-progress-text">{html.escape(self.status_text())}</div></div>'
        )


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def read_series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """``key`` per step from ``metrics.jsonl``; a resumed run rewrites steps after its checkpoint,
    the last record wins; rows without ``key`` (other metrics) are skipped."""
    by_step: dict[int, float] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
            if key in record:
                by_step[int(record["step"])] = float(record[key])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut short by a kill
    return sorted(by_step.items())


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    return read_series(run_dir, "loss")


def smoothed(points: list[tuple[int, float]], weight: float = SMOOTHING) -> list[tuple[int, float]]:
    """Exponential moving average, debiased so the first steps are not pulled towards 0."""
    out, average = [], 0.0
    for n, (step, value) in enumerate(points, 1):
        average = weight * average + (1 - weight) * value
        out.append((step, average / (1 - weight**n)))
    return out


def loss_curves(run_dir: Path) -> list[tuple[int, float, str]]:
    """The loss plot's rows: raw, smoothed and (when recorded) validation loss."""
    raw = [(s, v) for s, v in read_losses(run_dir) if math.isfinite(v)]
    rows = [(s, v, RAW) for s, v in raw] + [(s, v, SMOOTHED) for s, v in smoothed(raw)]
    return rows + [(s, v, VALIDATION) for s, v in read_series(run_dir, "val_loss") if math.isfinite(v)]


def read_log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_BYTES))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # tqdm redraws with carriage returns: keep only the last state of each line.
    cleaned = [line.rsplit("\r", 1)[-1] for line in data.replace("\r\n", "\n").split("\n")]
    return "\n".join([line for line in cleaned if line.strip()][-lines:])


def job_view(db: Database, job_id: int, log_path: Path) -> JobView:
    job = db.job(job_id)
    run_dir = TrainConfig.from_dict(job.config_dict).effective_run_dir if job.config_dict else None
    percent = 100.0 if job.status == "finished" else (100.0 * job.step / job.total if job.total else 0.0)
    eta = None
    if (
        job.status == "running"
        and job.segment_time
        and job.segment_step is not None
        and job.step > job.segment_step
    ):
        per_step = (time.time() - job.segment_time) / (job.step - job.segment_step)
        eta = per_step * max(job.total - job.step, 0)
    places = [queued.id for queued in db.queued()] if job.status == "queued" else []
    view = JobView(job, percent, eta, queue_position=places.index(job.id) + 1 if job.id in places else None)
    if run_dir is not None:
        view.losses = read_losses(run_dir)
        view.curves = loss_curves(run_dir)
        view.lrs = read_series(run_dir, "lr")
        samples = sorted((run_dir / "samples").glob("step-*.png"), reverse=True)[:12]
        view.samples = [(str(p), f"step {int(p.name.split('-')[1])}") for p in samples]
    view.log_tail = read_log_tail(log_path)
    return view
