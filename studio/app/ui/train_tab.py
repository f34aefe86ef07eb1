"""Train tab: dataset (upload, captions, check), preset and options, Start/Stop/Resume, live progress.

The settings column is kept per browser (``gr.BrowserState``: localStorage), so a reload
or an app restart brings back what the user had set.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.app import captions, datasets
from studio.app.context import AppContext
from studio.app.fit import better_base, fit_warning
from studio.app.messages import shown_paths
from studio.app.models import AUTO_CONFIG, DEFAULT, base_choices, base_fields
from studio.app.progress import RAW, SMOOTHED, VALIDATION, job_view
from studio.app.training import (
    DEFAULT_PRESET,
    JOB_HEADERS,
    followed_job,
    job_choices,
    job_message,
    jobs_table,
    queue_positions,
    submit_job,
)
from studio.app.ui.common import LIGHT, NO_CONFIG, config_picker, guard, int_or_none, number_or_none
from studio.app.ui.forms import Form
from studio.config import TrainConfig
from studio.errors import StudioError
from studio.options import Show, Spec, specs
from studio.presets import PRESETS

CAPTION_HEADERS = ["file", "caption", "status"]

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
    # An optional number left empty reaches the server as 0, which means "not set" (``_from_widget``),
    # so its bounds are checked by ``TrainConfig.validate``, not by the widget (which would refuse 0).
    low, high = (None, None) if spec.optional else (o.minimum, o.maximum)
    return gr.Number(value=value, label=o.label, precision=0 if whole else None, minimum=low, maximum=high)


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


def config_values(config: TrainConfig) -> list[Any]:
    """The advanced widgets' values for a whole config (a job's, for "Train again")."""
    return [
        "\n".join(getattr(config, s.name)) if s.kind is list else getattr(config, s.name) for s in _ADVANCED
    ]


def dataset_choice(ctx: AppContext, data: str) -> str:
    """A job's dataset folder as the Dataset field names it: its name, or its path in the workspace."""
    if not ctx.ws.contains(data):
        return data
    folder = Path(os.path.realpath(data))
    return folder.name if folder.parent == ctx.ws.datasets else ctx.ws.relative(folder)


def again_values(ctx: AppContext, job_id: int) -> dict[str, Any]:
    """A job's settings as the form's values (``JobWidgets`` names, then ``advanced``); the base's
    config choice is left to its picker, which picks one again when the base is set."""
    job = ctx.db.job(job_id)
    if not job.config_dict:
        raise StudioError(f"job #{job_id} has no settings to train again with")
    config = TrainConfig.from_dict(job.config_dict)
    choice, hub_id, found = base_fields(ctx.ws, config.base)
    if not found:
        raise StudioError(f"job #{job_id}'s base model is not here any more: {config.base}")
    return {"dataset": dataset_choice(ctx, config.data), "name": job.name, "base": choice, "hub_id": hub_id,
            "trigger": config.trigger or "", "gpus": job.gpus, "advanced": config_values(config)}  # fmt: skip


def _plot_frames(view) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss and learning-rate frames with numeric columns (an empty frame too: its axes stay numbers)."""
    curves = pd.DataFrame(
        {"step": pd.Series([r[0] for r in view.curves], dtype="int64"),
         "value": pd.Series([r[1] for r in view.curves], dtype="float64"),
         "series": pd.Series([r[2] for r in view.curves], dtype="str")}
    )  # fmt: skip
    lrs = pd.DataFrame(
        {"step": pd.Series([r[0] for r in view.lrs], dtype="int64"),
         "lr": pd.Series([r[1] for r in view.lrs], dtype="float64")}
    )  # fmt: skip
    return curves, lrs


@dataclass
class DatasetWidgets(Form):
    """Column 1: the dataset, its captions and its check."""

    upload: gr.File
    new_name: gr.Textbox
    dataset: gr.Dropdown
    trigger: gr.Textbox
    gallery: gr.Gallery
    table: gr.Dataframe
    report: gr.Code
    captioner: gr.Dropdown  # "Caption images": which captioner, overwrite or only missing, trigger first
    overwrite: gr.Checkbox
    prefix: gr.Checkbox


@dataclass
class JobWidgets(Form):
    """What Start reads besides the advanced options (names as ``training.submit_job`` takes them)."""

    dataset: gr.Dropdown
    name: gr.Textbox
    preset: gr.Dropdown
    base: gr.Dropdown
    hub_id: gr.Textbox
    trigger: gr.Textbox
    gpus: gr.Number
    base_config: gr.Dropdown  # shown for a single-file base only


@dataclass
class ProgressWidgets(Form):
    """Section 3, refreshed by the timer: only what changed is sent, so the page does not flicker."""

    jobs: gr.Dataframe
    progress: gr.HTML
    loss_plot: gr.LinePlot
    lr_plot: gr.LinePlot
    samples: gr.Gallery
    log: gr.Code
    job: gr.Dropdown


def _dataset_column(ctx: AppContext) -> tuple[DatasetWidgets, dict[str, gr.Button], gr.Textbox, gr.Textbox]:
    gr.Markdown("### 1 · Dataset")
    with gr.Row():
        upload = gr.File(
            file_count="multiple", label="Images, captions or a zip", elem_id="train-upload",
            file_types=["image", ".zip", ".txt", ".caption", ".jsonl", ".csv"], height=160,
        )  # fmt: skip
        with gr.Column():
            new_name = gr.Textbox(label="New dataset name", value="my-style", elem_id="train-dataset-name")
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
        check = gr.Button("Check", scale=1, elem_id="train-check")
    gallery = gr.Gallery(label="Images", columns=8, height=200, elem_id="train-gallery")
    table = gr.Dataframe(
        headers=CAPTION_HEADERS, type="array", interactive=True, wrap=True,
        label="Captions (edit, then Save)", elem_id="train-captions", max_height=320, static_columns=[0, 2],
    )  # fmt: skip
    with gr.Row():
        prepend = gr.Button("Prepend trigger to all", size="sm", elem_id="train-prepend")
        find = gr.Textbox(placeholder="find", show_label=False, container=False, elem_id="train-find")
        replace = gr.Textbox(
            placeholder="replace with", show_label=False, container=False, elem_id="train-replace"
        )
        replace_btn = gr.Button("Replace", size="sm", elem_id="train-replace-btn")
        save = gr.Button("Save captions", size="sm", variant="secondary", elem_id="train-save")
    with gr.Row():
        captioner = gr.Dropdown(
            captions.CHOICES, value=captions.CHOICES[0], allow_custom_value=True, scale=3,
            label="Captioner (default: the embedded toyworld one; or a workspace folder / hub id)",
            elem_id="train-captioner",
        )  # fmt: skip
        overwrite = gr.Checkbox(False, label="Overwrite existing captions", elem_id="train-caption-overwrite")
        prefix = gr.Checkbox(False, label="Write the trigger word first", elem_id="train-caption-prefix")
        caption = gr.Button("Caption images", size="sm", elem_id="train-caption", scale=1)
    report = gr.Code(
        label="Dataset check", language=None, interactive=False, lines=8, max_lines=24, elem_id="train-report"
    )
    buttons = {"create": create, "sample": sample, "check": check, "prepend": prepend, "replace": replace_btn,
               "save": save, "caption": caption}  # fmt: skip
    widgets = DatasetWidgets(
        upload, new_name, dataset, trigger, gallery, table, report, captioner, overwrite, prefix
    )
    return widgets, buttons, find, replace


def _progress_section(ctx: AppContext) -> tuple[ProgressWidgets, gr.Button]:
    gr.Markdown("### 3 · Progress")
    with gr.Row():
        job = gr.Dropdown(job_choices(ctx.db), label="Job", elem_id="train-job", scale=3)
        refresh = gr.Button("Refresh", size="sm", scale=1)
    progress = gr.HTML(elem_id="train-progress")
    with gr.Row():
        with gr.Column():
            loss_plot = gr.LinePlot(
                x="step", y="value", color="series", title="Loss", height=240, elem_id="train-loss",
                color_map={RAW: "#cfd8e3", SMOOTHED: "#1f6fb2", VALIDATION: "#e07b00"}, color_title="",
                y_title="loss", sort="x",
            )  # fmt: skip
            lr_plot = gr.LinePlot(
                x="step", y="lr", title="Learning rate", height=140, elem_id="train-lr", y_axis_format=".1e"
            )
        samples = gr.Gallery(label="Samples (newest first)", columns=4, height=240, elem_id="train-samples")
    log = gr.Code(label="Log", language=None, interactive=False, lines=8, elem_id="train-log")
    jobs = gr.Dataframe(
        headers=JOB_HEADERS,
        value=jobs_table(ctx.db, ctx.ws.root),
        interactive=False,
        label="Jobs",
        elem_id="train-jobs",
    )
    return ProgressWidgets(jobs, progress, loss_plot, lr_plot, samples, log, job), refresh


def build(ctx: AppContext) -> gr.Tab:
    ui = guard(ctx.ws.root)
    with gr.Tab("Train", id="train", elem_id="tab-train") as tab:
        gr.Markdown(
            "Drop images (and `.txt` captions) or a zip, fix captions, pick a preset and press **Start**. "
            "Training runs in a background worker: you can close the page, and stop or resume later."
        )
        with gr.Row():
            with gr.Column(scale=3):
                data, buttons, find, replace = _dataset_column(ctx)
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
                    placeholder="owner/name", elem_id="train-hub",
                )  # fmt: skip
                base_config = gr.Dropdown(
                    NO_CONFIG, value=AUTO_CONFIG, label="Single-file checkpoint: read it with the config of",
                    visible=False, elem_id="train-base-config",
                )  # fmt: skip
                name = gr.Textbox(label="Adapter name", value="my-style", elem_id="train-name")
                slots = len(ctx.jobs.slots)
                gpus = gr.Number(
                    value=1, precision=0, minimum=1, maximum=slots, label=f"GPUs for this job (of {slots})",
                    elem_id="train-gpus", visible=slots > 1,
                )  # fmt: skip
                with gr.Accordion("Advanced options", open=False, elem_id="train-advanced"):
                    advanced = []
                    pairs = list(zip(_ADVANCED, preset_values(DEFAULT_PRESET)))
                    for row in range(0, len(pairs), 2):
                        with gr.Row():
                            for spec, value in pairs[row : row + 2]:
                                widget = _widget(spec, value)
                                widget.elem_id = f"adv-{spec.name.replace('_', '-')}"
                                advanced.append(widget)
                fit = gr.Markdown(elem_id="train-fit")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                    resume = gr.Button("Resume", elem_id="train-resume")
                with gr.Row():
                    save_now = gr.Button("Save checkpoint now", size="sm", elem_id="train-save-now")
                    again = gr.Button("Train again with these settings", size="sm", elem_id="train-again")
                message = gr.Markdown(elem_id="train-message")
        shown, refresh = _progress_section(ctx)
        resolution = advanced[[spec.name for spec in _ADVANCED].index("resolution")]
        _wire_dataset(ctx, data, buttons, find, replace, resolution, message)
        _wire_captioning(ctx, data, buttons["caption"], resolution, message)
        form = JobWidgets(data.dataset, name, preset, base, hub_id, data.trigger, gpus, base_config)
        base.change(
            ui(lambda choice: config_picker(ctx.ws, choice)), base, base_config, api_visibility="private"
        )
        _wire_settings(ctx, form, advanced, preset_info, fit)
        actions = {"start": start, "stop": stop, "resume": resume, "refresh": refresh, "save_now": save_now,
                   "again": again}  # fmt: skip
        _wire_jobs(ctx, form, advanced, actions, shown, message)
        _keep_settings(ctx, form, advanced)
        tab.select(
            ui(lambda: (gr.update(choices=datasets.list_datasets(ctx.ws)), gr.update(choices=base_choices(ctx.ws)))),
            None, [data.dataset, base], api_visibility="private",
        )  # fmt: skip
    return tab


def _wire_dataset(ctx: AppContext, data: DatasetWidgets, buttons: dict[str, gr.Button], find: gr.Textbox,
                  replace: gr.Textbox, resolution: gr.Number, message: gr.Markdown) -> None:  # fmt: skip
    """Create (from an upload or the sample), check, and edit the captions of a dataset."""
    ui, private = guard(ctx.ws.root), {"api_visibility": "private"}
    shown = {"choice": data.dataset, "trigger_word": data.trigger, "resolution": resolution}

    def load_dataset(choice: str, trigger_word: str, resolution: float | None = None) -> dict[Any, Any]:
        if not choice:
            return {data.gallery: [], data.table: [], data.report: ""}
        view = datasets.dataset_view(ctx.ws, choice, trigger_word or None, int(resolution or 512))
        return {data.gallery: view.thumbnails, data.table: view.rows, data.report: view.report}

    @ui
    def create_dataset(files, dataset_name, resolution):
        if not files:
            raise StudioError("drop images, captions or a zip first")
        result = datasets.create_dataset(ctx.ws, dataset_name, [str(f) for f in files], ctx.limits)
        choice = result.folder.name
        note = f"Created dataset **{choice}** with {len(result.written)} files."
        if result.skipped:
            note += f" Skipped {len(result.skipped)}: " + "; ".join(result.skipped[:5])
        return {  # a new dataset's trigger starts empty: the sample's word must not carry over
            **load_dataset(choice, "", resolution), data.upload: None, data.trigger: "", message: note,
            data.dataset: gr.update(choices=datasets.list_datasets(ctx.ws), value=choice),
        }  # fmt: skip

    created = [data.upload, data.dataset, data.trigger, data.gallery, data.table, data.report, message]
    buttons["create"].click(create_dataset, [data.upload, data.new_name, resolution], created, **private)

    @ui
    def use_sample():
        folder, trigger = datasets.create_sample(ctx.ws)
        note = f"Created dataset **{folder.name}**: 8 shapes with captions. Its trigger word is `{trigger}`."
        return gr.update(choices=datasets.list_datasets(ctx.ws), value=folder.name), trigger, note

    buttons["sample"].click(use_sample, None, [data.dataset, data.trigger, message], **private)
    checked = [data.gallery, data.table, data.report]
    for event in (data.dataset.change, buttons["check"].click):
        event(ui(load_dataset), None, checked, inputs_kwargs=shown, **private)

    @ui
    def save_captions(choice, rows, trigger_word, resolution):
        changed = datasets.save_captions(datasets.dataset_folder(ctx.ws, choice), _rows(rows))
        view = load_dataset(choice, trigger_word, resolution)
        return {
            data.table: view[data.table],
            data.report: view[data.report],
            message: f"Saved {changed} caption file(s).",
        }

    buttons["prepend"].click(
        ui(lambda rows, word: datasets.prepend_trigger(_rows(rows), word)), [data.table, data.trigger], data.table,
        **private,
    )  # fmt: skip
    buttons["replace"].click(
        ui(lambda rows, a, b: datasets.find_replace(_rows(rows), a, b)), [data.table, find, replace], data.table,
        **private,
    )  # fmt: skip
    buttons["save"].click(
        save_captions, None, [data.table, data.report, message], inputs_kwargs={**shown, "rows": data.table},
        **private,
    )  # fmt: skip


def _wire_settings(ctx: AppContext, form: JobWidgets, advanced: list[Any], info: gr.Markdown,
                   fit: gr.Markdown) -> None:  # fmt: skip
    """A picked preset fills the options and, when it is for another family or size, switches the
    base to one that fits (if the picker has one) or warns with the time it would take."""
    ui, private = guard(ctx.ws.root), {"api_visibility": "private"}

    @ui
    def pick_preset(name, choice):
        switch = better_base(ctx.ws, PRESETS[name], choice)
        base = gr.update(value=switch) if switch else gr.skip()
        return [PRESETS[name].description, *preset_values(name), base]

    @ui
    def fit_note(name, choice, hub_id, *values):
        if (hub_id or "").strip() or name not in PRESETS:
            return ""
        options = config_from_widgets(list(values))
        config = TrainConfig.from_dict(
            {**options, "base": str(ctx.ws.resolve(choice)) if choice and choice != DEFAULT else DEFAULT}
        )
        return fit_warning(ctx.ws, ctx.db, PRESETS[name], choice, config)

    picked = form.preset.input(  # the user picked one (not a value set on page load)
        pick_preset, [form.preset, form.base], [info, *advanced, form.base], **private
    )
    noted = {
        "fn": fit_note,
        "inputs": [form.preset, form.base, form.hub_id, *advanced],
        "outputs": fit,
        **private,
    }
    picked.then(**noted)
    form.base.input(**noted)


def _wire_captioning(ctx: AppContext, data: DatasetWidgets, button: gr.Button, resolution: gr.Number,
                     message: gr.Markdown) -> None:  # fmt: skip
    """ "Caption images": the dataset's images captioned in place, with progress; the table reloads."""

    @guard(ctx.ws.root)
    def caption_images(choice, captioner, overwrite, prefix, trigger_word, size, progress=gr.Progress()):  # noqa: B008 - Gradio's progress idiom
        folder = datasets.dataset_folder(ctx.ws, choice)
        word = (trigger_word or "").strip()
        if prefix and not word:
            raise StudioError(
                "type the trigger word to write first, or untick 'Write the trigger word first'"
            )
        progress(0, desc="Loading the captioner")
        _, line = captions.caption_dataset(
            ctx.ws, folder, captioner, overwrite=bool(overwrite), prefix=word if prefix else None,
            on_progress=lambda done, total: progress(done / max(total, 1), desc=f"Captioning {done}/{total}"),
        )  # fmt: skip
        view = datasets.dataset_view(ctx.ws, choice, word or None, int(size or 512))
        return {data.gallery: view.thumbnails, data.table: view.rows, data.report: view.report, message: line}

    inputs = [data.dataset, data.captioner, data.overwrite, data.prefix, data.trigger, resolution]
    outputs = [data.gallery, data.table, data.report, message]
    button.click(caption_images, inputs, outputs, api_visibility="private")


def _keep_settings(ctx: AppContext, form: JobWidgets, advanced: list[Any]) -> None:
    """The settings column in the browser's localStorage: written in the page on every change (no
    server call), read back when the page loads; values that no longer fit are left out."""
    names = [*form.named(), *(spec.name for spec in _ADVANCED)]
    widgets = [*form.components(), *advanced]
    stored = gr.BrowserState({}, storage_key="studio-train-settings", secret=_browser_secret(ctx))
    keep = f"(...v) => Object.fromEntries({json.dumps(names)}.map((n, i) => [n, v[i]]))"
    for widget in widgets:
        widget.change(
            None, widgets, stored, js=keep, queue=False, show_progress="hidden", api_visibility="private"
        )

    @guard(ctx.ws.root, quiet=True)
    def restore(saved):
        if not isinstance(saved, dict) or not saved:
            return gr.skip()
        valid = {
            "dataset": lambda v: v in datasets.list_datasets(ctx.ws), "preset": lambda v: v in PRESETS,
            "base": lambda v: v in [value for _, value in base_choices(ctx.ws)],
            "gpus": lambda v: isinstance(v, (int, float)) and 1 <= v <= len(ctx.jobs.slots),
            "base_config": lambda v: False,  # it follows the base: picked again when the base is restored
        }  # fmt: skip
        out = {}
        for name, widget in zip(names, widgets):
            if name in saved and saved[name] is not None and valid.get(name, lambda v: True)(saved[name]):
                out[widget] = saved[name]
        return out or gr.skip()

    from gradio.context import Context

    Context.root_block.load(restore, stored, widgets, show_progress="hidden", api_visibility="private")


def _browser_secret(ctx: AppContext) -> str:
    """The key the stored settings are encrypted with: one per workspace, so they survive restarts."""
    path = ctx.ws.root / ".browser-secret"
    if not path.is_file():
        from studio.atomic import write_text

        write_text(path, secrets.token_hex(16))
    return path.read_text(encoding="utf-8").strip()


def _wire_jobs(ctx: AppContext, form: JobWidgets, advanced: list[Any], actions: dict[str, gr.Button],
               shown: ProgressWidgets, message: gr.Markdown) -> None:  # fmt: skip
    """Start, Stop, Resume, and the live progress that follows the running job."""
    ui, private = guard(ctx.ws.root), {"api_visibility": "private"}
    watched = gr.State({})  # {"id", "text"}: the job the message line speaks of, and what it said
    seen = gr.State({})  # what the page shows now, so a tick sends only what changed

    def said_now(job_id: int) -> str:
        return job_message(ctx.db.job(job_id), ctx.ws.root, queue_positions(ctx.db).get(job_id))

    def announce(job_id: int) -> dict[Any, Any]:
        text = said_now(job_id)
        return {message: text, watched: {"id": job_id, "text": text}}

    @ui
    def on_start(*values, **kw):
        job_id = submit_job(ctx, **form.values(kw), options=config_from_widgets(list(values)))
        return {shown.job: gr.update(choices=job_choices(ctx.db), value=job_id), **announce(job_id)}

    @ui
    def on_stop(job_id):
        if job_id is None:
            raise StudioError("choose a job")
        return announce(ctx.jobs.stop(int(job_id)).id)

    @ui
    def on_resume(job_id):
        if job_id is None:
            raise StudioError("choose a job")
        return announce(ctx.jobs.resume(int(job_id)).id)

    @ui
    def on_save_now(job_id):
        if job_id is None:
            raise StudioError("choose a running job")
        return announce(ctx.jobs.save_now(int(job_id)).id)

    @ui
    def on_again(job_id):
        if job_id is None:
            raise StudioError("choose a job whose settings to train again with")
        values = again_values(ctx, int(job_id))
        widgets = form.named()
        out = {widgets[key]: value for key, value in values.items() if key != "advanced"}
        out.update(zip(advanced, values["advanced"]))
        note = f"Loaded the settings of job #{job_id} (the preset's values are replaced by the job's); press **Start**."
        return {**out, message: note, watched: {}}

    actions["start"].click(on_start, advanced, [shown.job, message, watched], inputs_kwargs=form.inputs(),
                           **private)  # fmt: skip
    actions["stop"].click(on_stop, shown.job, [message, watched], **private)
    actions["resume"].click(on_resume, shown.job, [message, watched], **private)
    actions["save_now"].click(on_save_now, shown.job, [message, watched], **private)
    actions["again"].click(on_again, shown.job, [*form.components(), *advanced, message, watched], **private)

    def message_now(said: dict) -> dict[Any, Any]:
        """The message line again if the job it speaks of has moved on ("Queued" -> "failed")."""
        if said.get("id") is None:
            return {}
        text = said_now(said["id"])
        return {} if text == said.get("text") else {message: text, watched: {"id": said["id"], "text": text}}

    def tick(job_id, last: dict, said: dict, picked=None, follow: bool = True):
        """``follow``: the timer moves on from a job that ended; a pick or Refresh shows what was asked."""
        asked = job_id
        if follow or job_id is None:
            status = last.get("status") if last.get("job") == job_id else None
            job_id = followed_job(ctx.db, job_id, status, pinned=picked is not None and picked == job_id)
        out = message_now(said)
        if job_id is None:
            return out or gr.skip()
        view = job_view(ctx.db, int(job_id), ctx.jobs.log_path(int(job_id)))
        now = {
            "jobs": jobs_table(ctx.db, ctx.ws.root), "progress": shown_paths(view.html(), ctx.ws.root),
            "loss_plot": view.curves, "lr_plot": view.lrs, "samples": view.samples,
            "log": shown_paths(view.log_tail, ctx.ws.root), "job": job_id, "status": view.job.status,
            "series": list(dict.fromkeys(row[2] for row in view.curves)),
        }  # fmt: skip
        changed = {key for key in now if now[key] != last.get(key)}
        curves, lrs = _plot_frames(view)
        # No data: no plot (None), so the first rows draw it afresh with their series and numeric axes.
        values = {**now, "loss_plot": curves if len(curves) else None, "lr_plot": lrs if len(lrs) else None}
        out.update(shown.updates({key: values[key] for key in changed - {"job", "status", "series"}}))
        if "series" in changed:  # the plot keeps the colour domain it was drawn with: redraw it
            out[shown.loss_plot] = gr.update(value=values["loss_plot"], colors_in_legend=now["series"])
        if "jobs" in changed or job_id != asked:  # the value only when it moves: never undo a pick in flight
            out[shown.job] = gr.update(
                choices=job_choices(ctx.db), **({"value": job_id} if job_id != asked else {})
            )
        return {**out, seen: now}

    outputs = [*shown.components(), seen, message, watched]
    picked = gr.State(None)  # the job the user chose by hand in the picker
    shown.job.input(lambda job_id: job_id, shown.job, picked, **private)
    tick_inputs = {"job_id": shown.job, "last": seen, "said": watched, "picked": picked}
    gr.Timer(1.0).tick(
        guard(ctx.ws.root, quiet=True)(tick), None, outputs, inputs_kwargs=tick_inputs, show_progress="hidden",
        **private, **LIGHT,
    )  # fmt: skip
    fresh = {"job_id": shown.job, "said": watched}
    actions["refresh"].click(ui(lambda job_id, said: tick(job_id, {}, said, follow=False)), None, outputs, inputs_kwargs=fresh,
                             **private)  # fmt: skip
    shown.job.change(ui(lambda job_id, said: tick(job_id, {}, said, follow=False)), None, outputs, inputs_kwargs=fresh,
                     show_progress="hidden", **private)  # fmt: skip


def _rows(rows: Any) -> list[list[str]]:
    if rows is None:
        return []
    if isinstance(rows, pd.DataFrame):
        rows = rows.values.tolist()
    return [[str(c) if c is not None else "" for c in row] for row in rows if row and str(row[0]).strip()]
