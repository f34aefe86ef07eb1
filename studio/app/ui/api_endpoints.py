"""Named API endpoints for ``gradio_client`` scripts: train, job status, stop/resume, generate, adapters.

They call the same functions as the tabs. ``generate`` is wired through hidden components
so the client receives a real PNG file (with its recipe chunk), not a server path.
"""

from __future__ import annotations

import json

import gradio as gr

from studio.app import library, training
from studio.app.context import AppContext
from studio.app.mixing import Slot, settings_from
from studio.app.models import resolve_base
from studio.app.ui.common import GENERATE, guard
from studio.errors import StudioError


def _json_arg(text: str, what: str):
    try:
        return json.loads(text or "null")
    except json.JSONDecodeError as exc:
        raise StudioError(f"{what} must be JSON ({exc})") from None


def build(ctx: AppContext) -> None:
    api = guard(ctx.ws.root, api=True)

    def train(
        dataset: str, name: str = "", preset: str = training.DEFAULT_PRESET, base: str = "default", trigger: str = "",
        options_json: str = "{}",
    ) -> dict:  # fmt: skip
        """Queue a training job on a dataset inside the workspace; returns the job's status."""
        options = _json_arg(options_json, "options_json") or {}
        if not isinstance(options, dict):
            raise StudioError("options_json must be a JSON object of TrainConfig fields")
        job_id = training.submit_job(ctx, dataset, name, preset, base, "", trigger, options)
        return training.job_status(ctx, job_id)

    def job_status(job_id: int) -> dict:
        """Status, progress and ETA of one job."""
        return training.job_status(ctx, int(job_id))

    def list_jobs() -> list:
        """Every job, newest first."""
        return [training.job_status(ctx, job.id) for job in ctx.db.jobs()]

    def stop_job(job_id: int) -> dict:
        """Stop a running job (its last checkpoint stays) or cancel a queued one."""
        ctx.jobs.stop(int(job_id))
        return training.job_status(ctx, int(job_id))

    def resume_job(job_id: int) -> dict:
        """Queue a stopped, interrupted or failed job to continue from its last checkpoint."""
        ctx.jobs.resume(int(job_id))
        return training.job_status(ctx, int(job_id))

    def list_adapters() -> list:
        """The library: name, family, rank, trigger, created, images, source, file."""
        return library.api_rows(ctx.db)

    # Quick reads and writes skip the queue: a queue full of generations must not refuse them.
    for fn in (train, job_status, list_jobs, stop_job, resume_job, list_adapters):
        gr.api(api(fn), api_name=fn.__name__, queue=False)

    @api
    def generate(prompt, adapters_json, negative, seed, steps, guidance, width, height, scheduler, base):
        """Adapters: JSON list of {"name", "weight", "unet", "text_encoder", "enabled", "blocks"}."""
        entries = _json_arg(adapters_json, "adapters_json") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
            raise StudioError('adapters_json must be a list like [{"name": "ink", "weight": 0.8}]')
        slots = [Slot.from_entry(e) for e in entries]
        settings = settings_from(prompt, negative, seed, steps, guidance, width, height, scheduler)
        return str(ctx.mix.generate(resolve_base(ctx.ws, base or "default"), slots, settings)[0])

    with gr.Column(visible=False):
        inputs = [
            gr.Textbox(label="prompt"), gr.Textbox(label="adapters_json", value="[]"), gr.Textbox(label="negative"),
            gr.Number(label="seed", value=0, precision=0), gr.Number(label="steps", value=20, precision=0),
            gr.Number(label="guidance", value=7.0), gr.Number(label="width", value=0, precision=0),
            gr.Number(label="height", value=0, precision=0), gr.Textbox(label="scheduler", value="euler-a"),
            gr.Textbox(label="base", value="default"),
        ]  # fmt: skip
        image = gr.Image(type="filepath", format="png", label="image")
        trigger = gr.Button("generate")
    trigger.click(generate, inputs, image, api_name="generate", **GENERATE)
