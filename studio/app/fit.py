"""Does a preset fit the base model? Family and native size read from the model's config files.

A preset is written for one family at one size ("Style (SD 1.5)": SD 1.x at 512 px). Picked
with a base of another family or size, it would silently train for hours at a size the base
was not made for. ``better_base`` finds a base in the picker that fits; when none does,
``fit_warning`` says so before Start, with the time the settings would take here, estimated
from the speed of the jobs already run on this machine (``estimate_seconds``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from studio.app.db import Database, Job
from studio.app.models import DEFAULT, base_choices, folder_family, resolve_base
from studio.app.progress import format_seconds
from studio.app.workspace import Workspace
from studio.config import TrainConfig
from studio.errors import StudioError
from studio.presets import Preset


@dataclass(frozen=True)
class BaseShape:
    family: str  # a studio.families id
    resolution: int  # the size it generates natively, in pixels


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def base_shape(ws: Workspace, choice: str | None) -> BaseShape | None:
    """Family and native size of a picker choice that is a diffusers folder; None when unknown
    (a single-file checkpoint, a hub id, a folder without configs)."""
    from studio.models.default import default_model_dir

    folder = default_model_dir() if not choice or choice == DEFAULT else Path(resolve_base(ws, choice))
    unet, vae = _read_json(folder / "unet" / "config.json"), _read_json(folder / "vae" / "config.json")
    if not unet.get("sample_size"):
        return None
    try:
        family = folder_family(folder)  # the picker's own detection, from the configs alone
    except (StudioError, ValueError):
        return None
    scale = 2 ** (len(vae.get("block_out_channels") or [0, 0, 0, 0]) - 1)
    return BaseShape(family, int(unet["sample_size"]) * scale)


def _display_name(family: str) -> str:
    from studio.families import get_family

    try:
        return get_family(family).display_name
    except ValueError:
        return family


def preset_shape(preset: Preset) -> BaseShape | None:
    resolution = preset.values.get("resolution")
    return BaseShape(preset.family, int(resolution)) if preset.family and resolution else None


def better_base(ws: Workspace, preset: Preset, choice: str | None) -> str | None:
    """A picker choice that fits ``preset`` when the current one does not (None: keep it)."""
    wanted = preset_shape(preset)
    if wanted is None or base_shape(ws, choice) in (wanted, None):
        return None
    for _, value in base_choices(ws):
        if value != choice and base_shape(ws, value) == wanted:
            return value
    return None


def _seconds_per_step(job: Job) -> float | None:
    end = job.finished if job.status != "running" else time.time()
    if not (job.segment_time and end and job.segment_step is not None and job.step > job.segment_step):
        return None
    return (end - job.segment_time) / (job.step - job.segment_step)


def estimate_seconds(db: Database, config: TrainConfig) -> tuple[float, int] | None:
    """(seconds, job id it is scaled from): the newest timed job on the same base, its time per
    step scaled by pixels times batch (the cost of a step grows about linearly with both)."""
    for job in db.jobs():  # newest first
        per_step = _seconds_per_step(job)
        if per_step is None or not job.config_dict:
            continue
        done = TrainConfig.from_dict(job.config_dict)
        if done.base != config.base or not done.resolution or not config.resolution:
            continue
        scale = (config.resolution**2 * config.batch_size) / (done.resolution**2 * done.batch_size)
        return per_step * scale * (config.steps or 0), job.id
    return None


def fit_warning(ws: Workspace, db: Database, preset: Preset, choice: str | None, config: TrainConfig) -> str:
    """The line under the settings when the preset does not fit the base ("" when it does)."""
    wanted, have = preset_shape(preset), base_shape(ws, choice)
    if wanted is None or have is None or wanted == have:
        return ""
    made = f"{_display_name(wanted.family)} models at {wanted.resolution} px"
    base = f"{_display_name(have.family)} model made for {have.resolution} px"
    text = f"⚠ **{preset.name}** is for {made}; the base is a {base}. "
    estimate = estimate_seconds(db, config)
    steps = f"{config.steps:,} steps at {config.resolution} px, batch {config.batch_size}"
    if estimate is None:
        text += f"As set ({steps}) no job on this machine tells how long that takes yet."
    else:
        seconds, job_id = estimate
        text += f"As set ({steps}) this takes about **{format_seconds(seconds)}** here (from job #{job_id}'s speed)."
    return text + " Pick a preset for this base, or a base for this preset."
