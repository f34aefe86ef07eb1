"""Mix tab: adapters on sliders over a base, generate, compare, save/load recipes, bake.

Every event takes the widgets by name (``MixForm.inputs``) and calls the mixing service;
a failure shows a toast and leaves the tab as it was. All ``SLOTS`` slot columns exist from
the start; "add"/"remove" only show or hide them (a removed slot is emptied first).
Results are shown at their own size (``scale-down``: never enlarged or cropped); a click
opens the full preview.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from studio.app import library
from studio.app.block_fields import block_field_texts, parse_block_fields
from studio.app.context import AppContext
from studio.app.messages import shown_paths
from studio.app.mixing import (
    Slot,
    adapter_choices,
    insert_word,
    recipe_choices,
    recipe_path,
    settings_from,
    trigger_words,
)
from studio.app.models import (
    AUTO_CONFIG,
    DEFAULT,
    HUB,
    base_choices,
    base_fields,
    config_choices,
    download,
    resolve_base,
    resolve_config,
)
from studio.app.ui.common import GENERATE, NO_CONFIG, config_picker, guard, int_or_none
from studio.app.ui.forms import Form
from studio.errors import StudioError
from studio.generate import SCHEDULERS
from studio.mixer.lbw import PRESETS, parse_lbw
from studio.recipes import GenerationSettings

SLOTS = 8  # slot columns built; at most this many adapters in one blend
SHOWN = 2  # slots shown when the tab opens
NATIVE = {"object_fit": "scale-down", "allow_preview": True}  # galleries: own size, click to enlarge


@dataclass
class SlotForm(Form):
    """One adapter slot: picker, switch, sliders, the block-weight fields and an LBW vector."""

    adapter: gr.Dropdown
    enabled: gr.Checkbox
    weight: gr.Slider
    unet: gr.Slider
    text_encoder: gr.Slider
    down: gr.Textbox
    mid: gr.Textbox
    up: gr.Textbox
    double: gr.Textbox
    single: gr.Textbox
    lbw: gr.Textbox

    def read(self, kwargs: dict[str, Any], prefix: str, number: int) -> Slot:
        v = self.values(kwargs, prefix)
        lbw = (v["lbw"] or "").strip()
        if v["adapter"]:
            try:
                parse_lbw(lbw)
            except StudioError as exc:
                raise StudioError(
                    f"adapter {number} ({v['adapter']}): {exc.message}", hint=exc.hint
                ) from None
        return Slot(
            v["adapter"] or "", bool(v["enabled"]), float(v["weight"]), float(v["unet"]),
            float(v["text_encoder"]), parse_block_fields(v), lbw,
        )  # fmt: skip

    def show(self, slot: Slot, choices: list[tuple[str, str]]) -> dict[Any, Any]:
        return self.updates({
            "adapter": gr.update(choices=choices, value=slot.adapter), "enabled": slot.enabled,
            "weight": slot.weight, "unet": slot.unet, "text_encoder": slot.text_encoder,
            **block_field_texts(slot.blocks), "lbw": slot.lbw,
        })  # fmt: skip


@dataclass
class SlotView:
    """What a slot shows besides its inputs: its column (shown or hidden) and its trigger words."""

    column: gr.Column
    words: gr.Markdown
    insert: gr.Button


@dataclass
class SettingsForm(Form):
    prompt: gr.Textbox
    negative: gr.Textbox
    seed: gr.Number
    steps: gr.Slider
    guidance: gr.Slider
    width: gr.Number
    height: gr.Number
    scheduler: gr.Dropdown

    def read(self, kwargs: dict[str, Any], batch: float | None = 1) -> GenerationSettings:
        return settings_from(**self.values(kwargs, "s_"), batch=batch)

    def show(self, s: GenerationSettings) -> dict[Any, Any]:
        return self.updates({
            "prompt": s.prompt, "negative": s.negative, "seed": s.seed, "steps": s.steps, "guidance": s.guidance,
            "width": s.width or 0, "height": s.height or 0, "scheduler": s.scheduler,
        })  # fmt: skip


@dataclass
class MixForm:
    """What generation, grids, recipes and bakes read: base, slots, settings."""

    base: gr.Dropdown
    hub_id: gr.Textbox
    base_config: gr.Dropdown
    slots: list[SlotForm]
    settings: SettingsForm

    def inputs(self, with_settings: bool = True) -> dict[str, Any]:
        named: dict[str, Any] = {"base": self.base, "hub_id": self.hub_id, "base_config": self.base_config}
        for i, slot in enumerate(self.slots):
            named.update(slot.inputs(f"slot{i}_"))
        return {**named, **self.settings.inputs("s_")} if with_settings else named

    def base_spec(self, ctx: AppContext, kwargs: dict[str, Any]) -> str:
        """The base to load; for a single-file checkpoint, the mixer is told which config reads it."""
        spec = resolve_base(ctx.ws, kwargs["base"], kwargs["hub_id"])
        if not (kwargs["hub_id"] or "").strip() and config_choices(ctx.ws, kwargs["base"])[0]:
            ctx.mix.set_config(spec, resolve_config(ctx.ws, kwargs["base_config"]))
        return spec

    def read_slots(self, kwargs: dict[str, Any]) -> list[Slot]:
        return [slot.read(kwargs, f"slot{i}_", i + 1) for i, slot in enumerate(self.slots)]

    def components(self) -> list[Any]:
        return [
            self.base,
            self.hub_id,
            *(c for s in self.slots for c in s.components()),
            *self.settings.components(),
        ]


def _slot_column(ctx: AppContext, i: int) -> tuple[SlotForm, SlotView]:
    with gr.Column(min_width=200, elem_id=f"mix-slot-{i}", visible=i < SHOWN) as column:
        adapter = gr.Dropdown(
            adapter_choices(ctx.db), value="", label=f"Adapter {i + 1}", elem_id=f"mix-adapter-{i}"
        )
        with gr.Row():
            words = gr.Markdown(elem_id=f"mix-triggers-{i}")
            insert = gr.Button("Insert", size="sm", visible=False, elem_id=f"mix-insert-{i}", min_width=60)
        enabled = gr.Checkbox(value=True, label="enabled", elem_id=f"mix-enabled-{i}")
        weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="weight", elem_id=f"mix-weight-{i}")
        with gr.Accordion("UNet / text-encoder / block strength", open=False, elem_id=f"mix-parts-{i}"):
            unet = gr.Slider(-2, 2, value=1.0, step=0.05, label="UNet", elem_id=f"mix-unet-{i}")
            te = gr.Slider(-2, 2, value=1.0, step=0.05, label="text encoder", elem_id=f"mix-te-{i}")
            with gr.Row():
                blocks = [
                    gr.Textbox(label=group, placeholder="1", min_width=50, elem_id=f"mix-{group}-{i}")
                    for group in ("down", "mid", "up")
                ]
            with gr.Row():
                blocks += [
                    gr.Textbox(label=label, placeholder="1", min_width=50, elem_id=f"mix-{group}-{i}")
                    for group, label in (
                        ("double", "double (Flux, SD3.5 joint)"),
                        ("single", "single (Flux)"),
                    )
                ]
            gr.Markdown(
                "Blocks: empty = 1; a number, then `1:0.5` per numbered block (not for mid). down/mid/up are "
                "a UNet's (SD 1.x/2.x, SDXL), double/single a flow transformer's (SD3.5, Flux.1)."
            )
            lbw = gr.Textbox(
                label="LoRA Block Weight (A1111)", placeholder="e.g. MIDD, or 17 values: 1,0,0,0,1,1,1,1,…",
                elem_id=f"mix-lbw-{i}",
            )  # fmt: skip
            gr.Markdown(
                f"Presets {', '.join(PRESETS)}; or 17 / 26 values (SD 1.x/2.x), 12 / 20 (SDXL): "
                "BASE (text encoder), IN…, M00, OUT…, as the extension reads them. Multiplies the fields above."
            )
    return SlotForm(adapter, enabled, weight, unet, te, *blocks, lbw), SlotView(column, words, insert)


def _words_shown(words: list[str]) -> tuple[str, dict[str, Any]]:
    """The trigger line and its insert button for a slot's adapter."""
    if not words:
        return "", gr.update(visible=False)
    text = f"Trigger: `{words[0]}`" + (f" · tags: {', '.join(words[1:])}" if len(words) > 1 else "")
    return text, gr.update(visible=True, value=f"Insert {words[0]}")


def _settings_column() -> tuple[SettingsForm, gr.Checkbox, gr.Slider]:
    prompt = gr.Textbox(label="Prompt", lines=2, value="a circle, inkstyle", elem_id="mix-prompt")
    negative = gr.Textbox(label="Negative prompt", elem_id="mix-negative")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="mix-seed")
        randomize = gr.Checkbox(value=False, label="Randomize seed", elem_id="mix-randomize")
        batch = gr.Slider(1, 4, value=1, step=1, label="Images")
    with gr.Row():
        steps = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="mix-steps")
        guidance = gr.Slider(0, 20, value=7.0, step=0.5, label="Guidance", elem_id="mix-guidance")
    with gr.Row():
        width = gr.Number(value=0, precision=0, label="Width (0 = native)", elem_id="mix-width")
        height = gr.Number(value=0, precision=0, label="Height (0 = native)", elem_id="mix-height")
        scheduler = gr.Dropdown(list(SCHEDULERS), value="euler-a", label="Scheduler", elem_id="mix-scheduler")
    return SettingsForm(prompt, negative, seed, steps, guidance, width, height, scheduler), randomize, batch


def build(ctx: AppContext) -> gr.Tab:
    ui = guard(ctx.ws.root)
    with gr.Tab("Mix", id="mix", elem_id="tab-mix") as tab:
        with gr.Row():
            base = gr.Dropdown(
                base_choices(ctx.ws), value=DEFAULT, label="Base model", elem_id="mix-base", scale=3
            )
            with gr.Column(scale=2, min_width=200):
                hub_id = gr.Textbox(label="…or a hub id", placeholder="owner/name", elem_id="mix-hub")
                fetch = gr.Button("Download from the hub", size="sm", elem_id="mix-download")
            base_config = gr.Dropdown(NO_CONFIG, value=AUTO_CONFIG, label="Single-file checkpoint: read it with the config of",
                                      visible=False, elem_id="mix-base-config", scale=2)  # fmt: skip
            lora_upload = gr.File(label="Upload a LoRA (.safetensors) into the library", file_types=[".safetensors"],
                                  elem_id="mix-upload", scale=2, height=120)  # fmt: skip
        built = []
        for row in range(0, SLOTS, 4):
            with gr.Row():
                built += [_slot_column(ctx, i) for i in range(row, row + 4)]
        slots, views = [b[0] for b in built], [b[1] for b in built]
        count = gr.State(SHOWN)
        with gr.Row():
            add_slot = gr.Button("+ Add an adapter slot", size="sm", elem_id="mix-add-slot")
            remove_slot = gr.Button("− Remove the last slot", size="sm", elem_id="mix-remove-slot")
        with gr.Row():
            with gr.Column(scale=2):
                settings, randomize, batch = _settings_column()
                generate = gr.Button("Generate", variant="primary", elem_id="mix-generate")
                message = gr.Markdown(elem_id="mix-message")
                with gr.Accordion("Comparison grid", open=False):
                    grid_kind = gr.Radio([("adapters × prompts", "adapters"), ("weights × seeds (first adapter)", "weights")],
                                         value="adapters", label="Grid", elem_id="mix-grid-kind")  # fmt: skip
                    grid_prompts = gr.Textbox(label="Prompts, one per line (empty: the prompt above)", lines=2,
                                              elem_id="mix-grid-prompts")  # fmt: skip
                    grid_weights = gr.Textbox(label="Weights of the first adapter, comma list", value="0, 0.5, 1",
                                              elem_id="mix-grid-weights", visible=False)  # fmt: skip
                    grid_btn = gr.Button("Make grid", elem_id="mix-grid")
                with gr.Accordion("Recipe", open=False):
                    recipe_drop = gr.File(label="Drop a studio PNG or a recipe .json to restore it",
                                          file_types=[".png", ".json"], elem_id="mix-recipe-drop", height=120)  # fmt: skip
                    with gr.Row():
                        recipe_name = gr.Textbox(label="Recipe name", value="my-blend")
                        save_recipe = gr.Button("Save recipe", elem_id="mix-save-recipe")
                    recipe_file = gr.File(label="Recipe file", interactive=False)
                    with gr.Row():
                        saved_recipes = gr.Dropdown(recipe_choices(ctx.ws), value=None, label="Saved recipes",
                                                    elem_id="mix-saved-recipes")  # fmt: skip
                        load_saved = gr.Button("Load", elem_id="mix-load-recipe")
                with gr.Accordion("Bake the blend into one file", open=False):
                    with gr.Row():
                        bake_name = gr.Textbox(label="File name", value="my-blend", elem_id="mix-bake-name")
                        bake_rank = gr.Number(
                            value=0, precision=0, label="Rank (0 = exact, rank-concatenated)"
                        )
                    bake_btn = gr.Button("Bake", elem_id="mix-bake")
                    bake_file = gr.File(label="Baked adapter", interactive=False, elem_id="mix-bake-file")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Images (own size; click to enlarge)", columns=3, height=420,
                                     elem_id="mix-gallery", format="png", **NATIVE)  # fmt: skip
                grid_image = gr.Gallery(label="Grid", columns=1, height=420, elem_id="mix-grid-image",
                                        format="png", **NATIVE)  # fmt: skip
        form = MixForm(base, hub_id, base_config, slots, settings)
        mix = MixTab(ctx, ui, form, views, count, message)
        mix.wire_models(fetch)
        mix.wire_slots(add_slot, remove_slot)
        mix.wire_generate(generate, randomize, batch, gallery)
        mix.wire_grid(grid_btn, grid_kind, grid_prompts, grid_weights, grid_image)
        mix.wire_recipes(recipe_drop, recipe_name, save_recipe, recipe_file, saved_recipes, load_saved)
        mix.wire_bake(bake_btn, bake_name, bake_rank, bake_file)
        mix.wire_library(tab, lora_upload, saved_recipes)
    return tab


PRIVATE = {"api_visibility": "private"}


@dataclass
class MixTab:
    """The tab's events: each guarded, each answering only the components it computes."""

    ctx: AppContext
    ui: Any
    form: MixForm
    views: list[SlotView]
    count: gr.State
    message: gr.Markdown

    def shown(self, n: int) -> dict[Any, Any]:
        return {view.column: gr.update(visible=i < n) for i, view in enumerate(self.views)}

    def wire_models(self, fetch: gr.Button) -> None:
        ctx, form = self.ctx, self.form

        show_config = self.ui(lambda choice: config_picker(ctx.ws, choice))

        @self.ui
        def do_download(hub_id, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's progress idiom
            repo_id = (hub_id or "").strip()
            if not repo_id:
                raise StudioError("type a hub id (owner/name) to download")
            progress(0, desc=f"Downloading {repo_id}")
            download(repo_id)
            value = HUB + repo_id
            note = f"Downloaded **{repo_id}** into the hub cache; it is now in the base list."
            return gr.update(choices=base_choices(ctx.ws), value=value), "", note

        form.base.change(show_config, form.base, form.base_config, **PRIVATE)
        fetch.click(do_download, form.hub_id, [form.base, form.hub_id, self.message], **PRIVATE)

    def wire_slots(self, add: gr.Button, remove: gr.Button) -> None:
        ui, form, views, prompt = self.ui, self.form, self.views, self.form.settings.prompt
        columns = [view.column for view in views]

        @ui
        def do_add(n):
            if n >= SLOTS:
                raise StudioError(f"{SLOTS} adapter slots is the most a blend has")
            return {**self.shown(n + 1), self.count: n + 1}

        @ui
        def do_remove(n):
            if n <= 1:
                raise StudioError("one adapter slot always stays")
            last = form.slots[n - 1]
            return {**self.shown(n - 1), self.count: n - 1, last.adapter: "", last.lbw: ""}

        add.click(do_add, self.count, [*columns, self.count], **PRIVATE)
        last_fields = [c for slot in form.slots for c in (slot.adapter, slot.lbw)]
        remove.click(do_remove, self.count, [*columns, self.count, *last_fields], **PRIVATE)

        for slot, view in zip(form.slots, views, strict=True):

            @ui
            def show_words(name):
                return _words_shown(trigger_words(self.ctx.ws, self.ctx.db, name))

            @ui
            def do_insert(name, text):
                words = trigger_words(self.ctx.ws, self.ctx.db, name)
                if not words:
                    return gr.skip()
                new, added = insert_word(text, words[0])
                note = (
                    f"Added `{words[0]}` to the prompt."
                    if added
                    else f"`{words[0]}` is already in the prompt."
                )
                return {prompt: new, self.message: note}

            slot.adapter.change(show_words, slot.adapter, [view.words, view.insert], **PRIVATE)
            view.insert.click(do_insert, [slot.adapter, prompt], [prompt, self.message], **PRIVATE)

    def wire_generate(
        self, button: gr.Button, randomize: gr.Checkbox, batch: gr.Slider, gallery: gr.Gallery
    ) -> None:
        ctx, form, settings = self.ctx, self.form, self.form.settings

        @self.ui
        def do_generate(rand, n, history, **kw):
            slot_values = form.read_slots(kw)
            settings_ = settings.read(kw, batch=n)
            if rand:
                settings_ = replace(settings_, seed=random.randrange(2**31))
            paths = ctx.mix.generate(form.base_spec(ctx, kw), slot_values, settings_)
            blend = ", ".join(
                f"{s.adapter} {s.weight:g}" + (f" lbw={s.lbw}" if s.lbw else "")
                for s in slot_values
                if s.adapter and s.enabled
            )
            items = [
                (str(p), f"seed {settings_.seed + i}" + (f" · {blend}" if blend else ""))
                for i, p in enumerate(paths)
            ]
            previous = [
                (item[0], item[1]) if isinstance(item, (list, tuple)) else item for item in history or []
            ]
            note = f"Generated {len(paths)} image(s), seed {settings_.seed}."
            return [*items, *previous][:24], settings_.seed, note

        button.click(
            do_generate, [randomize, batch, gallery], [gallery, settings.seed, self.message],
            inputs_kwargs=form.inputs(), **PRIVATE, **GENERATE,
        )  # fmt: skip

    def wire_grid(
        self, button: gr.Button, kind: gr.Radio, prompts: gr.Textbox, weights: gr.Textbox, image: gr.Gallery
    ) -> None:
        ctx, form = self.ctx, self.form

        @self.ui
        def do_grid(kind_, prompts_, weights_, **kw):
            values = (weights_ if kind_ == "weights" else prompts_) or ""
            path = ctx.mix.grid(
                form.base_spec(ctx, kw), form.read_slots(kw), form.settings.read(kw), kind_, values
            )
            return [str(path)], f"Made the grid {ctx.ws.relative(path)}."

        @self.ui
        def show_fields(kind_):
            return gr.update(visible=kind_ != "weights"), gr.update(visible=kind_ == "weights")

        kind.change(show_fields, kind, [prompts, weights], **PRIVATE)
        button.click(
            do_grid,
            [kind, prompts, weights],
            [image, self.message],
            inputs_kwargs=form.inputs(),
            **PRIVATE,
            **GENERATE,
        )

    def wire_recipes(
        self,
        drop: gr.File,
        name: gr.Textbox,
        save: gr.Button,
        file: gr.File,
        saved: gr.Dropdown,
        load: gr.Button,
    ) -> None:
        ctx, form = self.ctx, self.form

        @self.ui
        def do_save_recipe(name_, **kw):
            path = ctx.mix.save_recipe(
                form.base_spec(ctx, kw), form.read_slots(kw), form.settings.read(kw), name_
            )
            choices = gr.update(choices=recipe_choices(ctx.ws), value=path.stem)
            return str(path), choices, f"Saved recipe {ctx.ws.relative(path)}."

        save.click(
            do_save_recipe,
            [name],
            [file, saved, self.message],
            inputs_kwargs=form.inputs(),
            **PRIVATE,
            **GENERATE,
        )

        @self.ui
        def do_load_recipe(path, n):
            if not path:
                return gr.skip()
            recipe, found = ctx.mix.load_recipe(path)
            choices = adapter_choices(ctx.db)
            out: dict[Any, Any] = {}
            for i, widgets in enumerate(form.slots):
                out.update(widgets.show(found[i] if i < len(found) else Slot(""), choices))
            choice, hub, known = base_fields(ctx.ws, recipe.base)
            note = f"Restored the recipe ({len(found)} adapter(s), seed {recipe.settings.seed})."
            if len(found) > SLOTS:
                note += f" Only the first {SLOTS} adapters fit in the slots."
            if not known:
                note += f" Its base {recipe.base!r} is not in the workspace: the default is chosen."
            shown = min(SLOTS, max(n, len(found)))
            return {
                **out, **form.settings.show(recipe.settings), self.message: note, form.hub_id: hub,
                form.base: gr.update(choices=base_choices(ctx.ws), value=choice), **self.shown(shown), self.count: shown,
            }  # fmt: skip

        outputs = [*form.components(), self.message, *(v.column for v in self.views), self.count]
        drop.upload(do_load_recipe, [drop, self.count], outputs, **PRIVATE)
        load.click(
            lambda name_, n: do_load_recipe(str(recipe_path(ctx.ws, name_)) if name_ else None, n),
            [saved, self.count], outputs, **PRIVATE,
        )  # fmt: skip

    def wire_bake(self, button: gr.Button, name: gr.Textbox, rank: gr.Number, file: gr.File) -> None:
        ctx, form = self.ctx, self.form

        @self.ui
        def do_bake(name_, rank_, **kw):
            path, report = ctx.mix.bake(
                form.base_spec(ctx, kw), form.read_slots(kw), name_, int_or_none(rank_)
            )
            return str(path), f"Baked {shown_paths(report.summary(), ctx.ws.root)}; it is now in the Library."

        button.click(
            do_bake, [name, rank], [file, self.message],
            inputs_kwargs=form.inputs(with_settings=False), **PRIVATE, **GENERATE,
        )  # fmt: skip

    def wire_library(self, tab: gr.Tab, upload: gr.File, saved: gr.Dropdown) -> None:
        ctx, form = self.ctx, self.form
        pickers = [slot.adapter for slot in form.slots]
        columns = [view.column for view in self.views]

        @self.ui
        def do_upload(path, n, *current):
            if not path:
                return gr.skip()
            row = library.import_file(ctx.ws, ctx.db, path)
            choices = adapter_choices(ctx.db)
            free = next((i for i, value in enumerate(current) if not value), None)
            out = {
                picker: gr.update(choices=choices, value=row.name)
                if i == free
                else gr.update(choices=choices)
                for i, picker in enumerate(pickers)
            }
            shown = max(n, free + 1) if free is not None else n
            note = f"Imported **{row.name}** into the library."
            if free is None:
                note += " Every slot is taken: pick it in a slot to use it."
            return {**out, **self.shown(shown), self.count: shown, self.message: note}

        upload.upload(
            do_upload,
            [upload, self.count, *pickers],
            [*pickers, *columns, self.count, self.message],
            **PRIVATE,
        )

        @self.ui
        def refresh_choices():
            return {
                **{picker: gr.update(choices=adapter_choices(ctx.db)) for picker in pickers},
                form.base: gr.update(choices=base_choices(ctx.ws)),
                saved: gr.update(choices=recipe_choices(ctx.ws)),
            }

        tab.select(refresh_choices, None, [*pickers, form.base, saved], **PRIVATE)
