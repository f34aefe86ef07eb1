"""Train tab: dataset (upload, captions, check), preset and options, Start/Stop/Resume, live progress."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import gradio as gr
import pandas as pd

from studio.app import datasets
from studio.app.context import AppContext
from studio.app.models import DEFAULT, base_choices, resolve_base
from studio.app.progress import job_view
from studio.app.ui.common import LIGHT, guard, int_or_none, number_or_none
from studio.config import TrainConfig
from studio.errors import StudioError
from studio.options import Show, Spec, specs
from studio.presets import PRESETS, get_preset
from studio.samples import make_demo_dataset

DEFAULT_PRESET = "Quick demo (embedded model)"
CAPTION_HEADERS = ["file", "caption", "status"]
JOB_HEADERS = ["job", "name", "status", "progress", "created", "message"]

# The advanced accordion: the options the table marks ADVANCED, in TrainConfig's order.
_ADVANCED: list[Spec] = [spec for spec in specs(TrainConfig) if Show.ADVANCED in spec.option.show]


def _widget(spec: Spec, value: Any) -> Any:
    o = spec.option
    if spec.kind is bool:
        return gr.Checkbox(value=value, label=o.label)
    if o.choices:
        return gr.Dropdown(value=value, choices=list(o.choices), label=o.label)
    if spec.kind is list:
        return gr.Textbox(value=value, label=o.label, lines=2)
    whole = spec.kind is int
    return gr.Number(
        value=value, label=o.label, precision=0 if whole else None, minimum=o.minimum, maximum=o.maximum
    )


def preset_values(name: str) -> list[Any]:
    """The advanced widgets' values for a preset (a preset is a partial TrainConfig)."""
    config = PRESETS[name].apply() if name in PRESETS else TrainConfig()
    values = []
    for spec in _ADVANCED:
        value = getattr(config, spec.name)
        values.append("\n".join(value) if spec.kind is list else value)
    return values


def _from_widget(spec: Spec, value: Any) -> Any:
    """A widget's value as the option's type; an empty or 0 optional number means "not set"."""
    if spec.kind is list:
        return [line.strip() for line in (value or "").splitlines() if line.strip()]
    if spec.kind in (int, float) and spec.optional:
        return int_or_none(value) if spec.kind is int else number_or_none(value)
    if spec.kind in (int, float):
        return spec.kind(value or 0)
    return value


def config_from_widgets(values: list[Any]) -> dict[str, Any]:
    return {spec.name: _from_widget(spec, value) for spec, value in zip(_ADVANCED, values)}


def submit_job(ctx: AppContext, dataset: str, name: str, preset: str, base: str, hub_id: str,
               trigger: str, options: dict[str, Any]) -> int:  # fmt: skip
    """Shared by the Start button and the ``/train`` API endpoint."""
    folder = datasets.dataset_folder(ctx.ws, dataset)
    values = {**dataclasses.asdict(get_preset(preset).apply()), **options}
    values.update(
        data=str(folder), base=resolve_base(ctx.ws, base, hub_id), trigger=(trigger or "").strip() or None
    )
    config = TrainConfig.from_dict(
        {k: v for k, v in values.items() if k not in ("output", "run_dir", "resume")}
    )
    return ctx.jobs.submit(name or folder.name, config)


def jobs_table(ctx: AppContext) -> list[list[Any]]:
    rows = []
    for job in ctx.db.jobs():
        progress = f"{job.step}/{job.total}" if job.total else ""
        created = datetime.fromtimestamp(job.created).strftime("%Y-%m-%d %H:%M")
        rows.append([job.id, job.name, job.status, progress, created, job.error or ""])
    return rows


def job_choices(ctx: AppContext) -> list[tuple[str, int]]:
    return [(f"#{job.id} {job.name} ({job.status})", job.id) for job in ctx.db.jobs()]


def build(ctx: AppContext) -> gr.Tab:
    with gr.Tab("Train", id="train", elem_id="tab-train") as tab:
        gr.Markdown(
            "Drop images (and `.txt` captions) or a zip, fix captions, pick a preset and press **Start**. "
            "Training runs in a background worker: you can close the page, and stop or resume later."
        )
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("### 1 · Dataset")
                with gr.Row():
                    upload = gr.File(
                        file_count="multiple", label="Images, captions or a zip", elem_id="train-upload",
                        file_types=["image", ".zip", ".txt", ".caption", ".jsonl", ".csv"], height=160,
                    )  # fmt: skip
                    with gr.Column():
                        new_name = gr.Textbox(
                            label="New dataset name", value="my-style", elem_id="train-dataset-name"
                        )
                        create = gr.Button("Create dataset from upload", elem_id="train-create")
                        sample = gr.Button(
                            "…or try the sample dataset (8 drawn shapes)", size="sm", elem_id="train-sample"
                        )
                with gr.Row():
                    dataset = gr.Dropdown(
                        datasets.list_datasets(ctx.ws), value=None, label="Dataset (or a folder inside the workspace)",
                        allow_custom_value=True, elem_id="train-dataset", scale=3,
                    )  # fmt: skip
                    trigger = gr.Textbox(label="Trigger word", elem_id="train-trigger", scale=2)
                    check_btn = gr.Button("Check", scale=1, elem_id="train-check")
                gallery = gr.Gallery(label="Images", columns=8, height=200, elem_id="train-gallery")
                table = gr.Dataframe(
                    headers=CAPTION_HEADERS, type="array", interactive=True, wrap=True,
                    label="Captions (edit, then Save)", elem_id="train-captions", max_height=320,
                    static_columns=[0, 2],
                )  # fmt: skip
                with gr.Row():
                    prepend = gr.Button("Prepend trigger to all", size="sm", elem_id="train-prepend")
                    find = gr.Textbox(
                        placeholder="find", show_label=False, container=False, elem_id="train-find"
                    )
                    replace = gr.Textbox(
                        placeholder="replace with", show_label=False, container=False, elem_id="train-replace"
                    )
                    replace_btn = gr.Button("Replace", size="sm", elem_id="train-replace-btn")
                    save = gr.Button("Save captions", size="sm", variant="secondary", elem_id="train-save")
                report = gr.Code(
                    label="Dataset check",
                    language=None,
                    interactive=False,
                    lines=8,
                    max_lines=24,
                    elem_id="train-report",
                )
            with gr.Column(scale=2):
                gr.Markdown("### 2 · Settings")
                preset = gr.Dropdown(
                    list(PRESETS), value=DEFAULT_PRESET, label="Preset", elem_id="train-preset"
                )
                preset_info = gr.Markdown(PRESETS[DEFAULT_PRESET].description)
                base = gr.Dropdown(
                    base_choices(ctx.ws), value=DEFAULT, label="Base model", elem_id="train-base"
                )
                hub_id = gr.Textbox(
                    label="…or a hub id (needs the model in the local cache offline)",
                    placeholder="owner/name",
                )
                name = gr.Textbox(label="Adapter name", value="my-style", elem_id="train-name")
                with gr.Accordion("Advanced options", open=False, elem_id="train-advanced"):
                    advanced = []
                    pairs = list(zip(_ADVANCED, preset_values(DEFAULT_PRESET)))
                    for row in range(0, len(pairs), 2):
                        with gr.Row():
                            for spec, value in pairs[row : row + 2]:
                                widget = _widget(spec, value)
                                widget.elem_id = f"adv-{spec.name.replace('_', '-')}"
                                advanced.append(widget)
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                    resume = gr.Button("Resume", elem_id="train-resume")
                message = gr.Markdown(elem_id="train-message")
        gr.Markdown("### 3 · Progress")
        with gr.Row():
            job = gr.Dropdown(job_choices(ctx), label="Job", elem_id="train-job", scale=3)
            refresh = gr.Button("Refresh", size="sm", scale=1)
        progress = gr.HTML(elem_id="train-progress")
        with gr.Row():
            loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", height=240, elem_id="train-loss")
            samples = gr.Gallery(
                label="Samples (newest first)", columns=4, height=240, elem_id="train-samples"
            )
        log = gr.Code(label="Log", language=None, interactive=False, lines=8, elem_id="train-log")
        jobs = gr.Dataframe(
            headers=JOB_HEADERS, value=jobs_table(ctx), interactive=False, label="Jobs", elem_id="train-jobs"
        )
        last = gr.State({})
        timer = gr.Timer(1.0)

        # Dataset.
        resolution = advanced[[spec.name for spec in _ADVANCED].index("resolution")]

        def load_dataset(choice: str, trigger_word: str, resolution: float | None = None):
            if not choice:
                return [], [], ""
            folder = datasets.dataset_folder(ctx.ws, choice)
            checked = datasets.check(folder, trigger_word or None, int(resolution or 512))
            rows = datasets.caption_rows(folder, checked)
            thumbs = [(str(item_path), item_path.name) for item_path in datasets.image_files(folder)
                      if not any(p.path == item_path for p in checked.problems)][:200]  # fmt: skip
            return thumbs, rows, checked.format()

        @guard
        def create_dataset(files, dataset_name, trigger_word, resolution):
            if not files:
                raise StudioError("drop images, captions or a zip first")
            result = datasets.create_dataset(ctx.ws, dataset_name, [str(f) for f in files], ctx.limits)
            choice = result.folder.name
            thumbs, rows, text = load_dataset(choice, trigger_word, resolution)
            note = f"Created dataset **{choice}** with {len(result.written)} files."
            if result.skipped:
                note += f" Skipped {len(result.skipped)}: " + "; ".join(result.skipped[:5])
            return (
                gr.update(choices=datasets.list_datasets(ctx.ws), value=choice),
                None,
                thumbs,
                rows,
                text,
                note,
            )

        create.click(
            create_dataset, [upload, new_name, trigger, resolution], [dataset, upload, gallery, table, report, message],
            api_visibility="private",
        )  # fmt: skip

        @guard
        def use_sample():
            folder = make_demo_dataset(ctx.ws.unique(ctx.ws.datasets, "sample-shapes"))
            note = (
                f"Created dataset **{folder.name}**: 8 shapes with captions. Its trigger word is `inkstyle`."
            )
            return gr.update(choices=datasets.list_datasets(ctx.ws), value=folder.name), "inkstyle", note

        sample.click(use_sample, None, [dataset, trigger, message], api_visibility="private")
        for event in (dataset.change, check_btn.click):
            event(
                guard(load_dataset),
                [dataset, trigger, resolution],
                [gallery, table, report],
                api_visibility="private",
            )

        @guard
        def prepend_trigger(rows, trigger_word):
            return datasets.prepend_trigger(_rows(rows), trigger_word)

        @guard
        def find_replace(rows, find_text, replace_text):
            return datasets.find_replace(_rows(rows), find_text, replace_text)

        @guard
        def save_captions(choice, rows, trigger_word, resolution):
            folder = datasets.dataset_folder(ctx.ws, choice)
            changed = datasets.save_captions(folder, _rows(rows))
            thumbs, new_rows, text = load_dataset(choice, trigger_word, resolution)
            return new_rows, text, f"Saved {changed} caption file(s)."

        prepend.click(prepend_trigger, [table, trigger], table, api_visibility="private")
        replace_btn.click(find_replace, [table, find, replace], table, api_visibility="private")
        save.click(
            save_captions,
            [dataset, table, trigger, resolution],
            [table, report, message],
            api_visibility="private",
        )

        # Settings and actions.
        preset.input(  # the user picked one (not a value set on page load)
            lambda p: [PRESETS[p].description, *preset_values(p)], preset, [preset_info, *advanced],
            api_visibility="private",
        )  # fmt: skip

        @guard
        def on_start(choice, adapter_name, preset_name, base_choice, hub, trigger_word, *values):
            job_id = submit_job(ctx, choice, adapter_name, preset_name, base_choice, hub, trigger_word,
                                config_from_widgets(list(values)))  # fmt: skip
            return gr.update(choices=job_choices(ctx), value=job_id), f"Queued job #{job_id}."

        @guard
        def on_stop(job_id):
            if job_id is None:
                raise StudioError("choose a job")
            found = ctx.jobs.stop(int(job_id))
            return (
                f"Stopping job #{found.id}…"
                if found.status == "running"
                else f"Job #{found.id} {found.status}."
            )

        @guard
        def on_resume(job_id):
            if job_id is None:
                raise StudioError("choose a job")
            ctx.jobs.resume(int(job_id))
            return f"Job #{job_id} queued to resume from its last checkpoint."

        start.click(
            on_start, [dataset, name, preset, base, hub_id, trigger, *advanced], [job, message],
            api_visibility="private",
        )  # fmt: skip
        stop.click(on_stop, job, message, api_visibility="private")
        resume.click(on_resume, job, message, api_visibility="private")

        # Live progress: only what changed is sent, so the page does not flicker.
        def tick(job_id, seen: dict):
            table_rows = jobs_table(ctx)
            if job_id is None and table_rows:
                job_id = table_rows[0][0]
            if job_id is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
            view = job_view(ctx.db, int(job_id), ctx.jobs.log_path(int(job_id)))
            state = {
                "jobs": table_rows, "html": view.html(), "loss": view.losses, "samples": view.samples,
                "log": view.log_tail, "job": job_id,
            }  # fmt: skip
            out = [
                table_rows if state["jobs"] != seen.get("jobs") else gr.skip(),
                state["html"] if state["html"] != seen.get("html") else gr.skip(),
                pd.DataFrame(view.losses, columns=["step", "loss"]) if state["loss"] != seen.get("loss") else gr.skip(),
                view.samples if state["samples"] != seen.get("samples") else gr.skip(),
                view.log_tail if state["log"] != seen.get("log") else gr.skip(),
                gr.update(choices=job_choices(ctx), value=job_id)
                if state["jobs"] != seen.get("jobs") or job_id != seen.get("job") else gr.skip(),
            ]  # fmt: skip
            return (*out, state)

        outputs = [jobs, progress, loss_plot, samples, log, job, last]
        timer.tick(
            guard(tick), [job, last], outputs, api_visibility="private", show_progress="hidden", **LIGHT
        )
        refresh.click(lambda j: tick(j, {}), [job], outputs, api_visibility="private")
        job.change(lambda j: tick(j, {}), [job], outputs, api_visibility="private", show_progress="hidden")
        tab.select(
            lambda: (gr.update(choices=datasets.list_datasets(ctx.ws)), gr.update(choices=base_choices(ctx.ws))),
            None, [dataset, base], api_visibility="private",
        )  # fmt: skip
    return tab


def _rows(rows: Any) -> list[list[str]]:
    if rows is None:
        return []
    if isinstance(rows, pd.DataFrame):
        rows = rows.values.tolist()
    return [[str(c) if c is not None else "" for c in row] for row in rows if row and str(row[0]).strip()]
