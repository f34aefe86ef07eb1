"""Mix tab: adapters on sliders over a base, generate, compare, save/load recipes, bake.

Every event takes the widgets by name (``MixForm.inputs``) and calls the mixing service;
a failure shows a toast and leaves the tab as it was.
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
from studio.app.mixing import Slot, adapter_choices, recipe_choices, recipe_path, settings_from
from studio.app.models import DEFAULT, base_choices, base_fields, resolve_base
from studio.app.ui.common import GENERATE, guard, int_or_none
from studio.app.ui.forms import Form
from studio.generate import SCHEDULERS
from studio.recipes import GenerationSettings

SLOTS = 4


@dataclass
class SlotForm(Form):
    """One adapter slot: picker, switch, sliders and the three block-weight fields."""

    adapter: gr.Dropdown
    enabled: gr.Checkbox
    weight: gr.Slider
    unet: gr.Slider
    text_encoder: gr.Slider
    down: gr.Textbox
    mid: gr.Textbox
    up: gr.Textbox

    def read(self, kwargs: dict[str, Any], prefix: str) -> Slot:
        v = self.values(kwargs, prefix)
        return Slot(
            v["adapter"] or "", bool(v["enabled"]), float(v["weight"]), float(v["unet"]),
            float(v["text_encoder"]), parse_block_fields(v),
        )  # fmt: skip

    def show(self, slot: Slot, choices: list[tuple[str, str]]) -> dict[Any, Any]:
        return self.updates({
            "adapter": gr.update(choices=choices, value=slot.adapter), "enabled": slot.enabled,
            "weight": slot.weight, "unet": slot.unet, "text_encoder": slot.text_encoder,
            **block_field_texts(slot.blocks),
        })  # fmt: skip


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
    slots: list[SlotForm]
    settings: SettingsForm

    def inputs(self, with_settings: bool = True) -> dict[str, Any]:
        named: dict[str, Any] = {"base": self.base, "hub_id": self.hub_id}
        for i, slot in enumerate(self.slots):
            named.update(slot.inputs(f"slot{i}_"))
        return {**named, **self.settings.inputs("s_")} if with_settings else named

    def base_spec(self, ctx: AppContext, kwargs: dict[str, Any]) -> str:
        return resolve_base(ctx.ws, kwargs["base"], kwargs["hub_id"])

    def read_slots(self, kwargs: dict[str, Any]) -> list[Slot]:
        return [slot.read(kwargs, f"slot{i}_") for i, slot in enumerate(self.slots)]

    def components(self) -> list[Any]:
        return [
            self.base,
            self.hub_id,
            *(c for s in self.slots for c in s.components()),
            *self.settings.components(),
        ]


def _slot_column(ctx: AppContext, i: int) -> SlotForm:
    with gr.Column(min_width=200, elem_id=f"mix-slot-{i}"):
        adapter = gr.Dropdown(
            adapter_choices(ctx.db), value="", label=f"Adapter {i + 1}", elem_id=f"mix-adapter-{i}"
        )
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
            gr.Markdown("UNet blocks: empty = 1; a number, and for down/up `1:0.5` per numbered block.")
    return SlotForm(adapter, enabled, weight, unet, te, *blocks)


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
            hub_id = gr.Textbox(label="…or a hub id", placeholder="owner/name", scale=2, elem_id="mix-hub")
            lora_upload = gr.File(label="Upload a LoRA (.safetensors) into the library", file_types=[".safetensors"],
                                  elem_id="mix-upload", scale=2, height=120)  # fmt: skip
        with gr.Row():
            slots = [_slot_column(ctx, i) for i in range(SLOTS)]
        with gr.Row():
            with gr.Column(scale=2):
                settings, randomize, batch = _settings_column()
                generate = gr.Button("Generate", variant="primary", elem_id="mix-generate")
                message = gr.Markdown(elem_id="mix-message")
                with gr.Accordion("Comparison grid", open=False):
                    grid_kind = gr.Radio([("adapters × prompts", "adapters"), ("weights × seeds (first adapter)", "weights")],
                                         value="adapters", label="Grid")  # fmt: skip
                    grid_values = gr.Textbox(label="Prompts (one per line) or weights (comma list)", lines=2)
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
                gallery = gr.Gallery(
                    label="Images", columns=3, height=420, elem_id="mix-gallery", format="png"
                )
                grid_image = gr.Image(
                    label="Grid", type="filepath", interactive=False, elem_id="mix-grid-image"
                )
        form = MixForm(base, hub_id, slots, settings)
        private = {"api_visibility": "private"}

        @ui
        def do_generate(rand, n, history, **kw):
            slot_values = form.read_slots(kw)
            settings_ = settings.read(kw, batch=n)
            if rand:
                settings_ = replace(settings_, seed=random.randrange(2**31))
            paths = ctx.mix.generate(form.base_spec(ctx, kw), slot_values, settings_)
            blend = ", ".join(f"{s.adapter} {s.weight:g}" for s in slot_values if s.adapter and s.enabled)
            items = [
                (str(p), f"seed {settings_.seed + i}" + (f" · {blend}" if blend else ""))
                for i, p in enumerate(paths)
            ]
            previous = [
                (item[0], item[1]) if isinstance(item, (list, tuple)) else item for item in history or []
            ]
            note = f"Generated {len(paths)} image(s), seed {settings_.seed}."
            return [*items, *previous][:24], settings_.seed, note

        generate.click(
            do_generate, [randomize, batch, gallery], [gallery, settings.seed, message],
            inputs_kwargs=form.inputs(), **private, **GENERATE,
        )  # fmt: skip

        @ui
        def do_grid(kind, grid_text, **kw):
            return str(
                ctx.mix.grid(
                    form.base_spec(ctx, kw), form.read_slots(kw), settings.read(kw), kind, grid_text or ""
                )
            )

        grid_btn.click(
            do_grid, [grid_kind, grid_values], grid_image, inputs_kwargs=form.inputs(), **private, **GENERATE
        )

        @ui
        def do_save_recipe(name, **kw):
            path = ctx.mix.save_recipe(form.base_spec(ctx, kw), form.read_slots(kw), settings.read(kw), name)
            choices = gr.update(choices=recipe_choices(ctx.ws), value=path.stem)
            return str(path), choices, f"Saved recipe {ctx.ws.relative(path)}."

        save_recipe.click(
            do_save_recipe, [recipe_name], [recipe_file, saved_recipes, message],
            inputs_kwargs=form.inputs(), **private, **GENERATE,
        )  # fmt: skip

        @ui
        def do_load_recipe(path):
            if not path:
                return gr.skip()
            recipe, found = ctx.mix.load_recipe(path)
            choices = adapter_choices(ctx.db)
            out: dict[Any, Any] = {}
            for i, widgets in enumerate(slots):
                out.update(widgets.show(found[i] if i < len(found) else Slot(""), choices))
            choice, hub, known = base_fields(ctx.ws, recipe.base)
            note = f"Restored the recipe ({len(found)} adapter(s), seed {recipe.settings.seed})."
            if len(found) > SLOTS:
                note += f" Only the first {SLOTS} adapters fit in the slots."
            if not known:
                note += f" Its base {recipe.base!r} is not in the workspace: the default is chosen."
            return {
                **out, **settings.show(recipe.settings), message: note, hub_id: hub,
                base: gr.update(choices=base_choices(ctx.ws), value=choice),
            }  # fmt: skip

        recipe_outputs = [*form.components(), message]
        recipe_drop.upload(do_load_recipe, recipe_drop, recipe_outputs, **private)
        load_saved.click(
            lambda name: do_load_recipe(str(recipe_path(ctx.ws, name)) if name else None),
            saved_recipes, recipe_outputs, **private,
        )  # fmt: skip

        @ui
        def do_bake(name, rank, **kw):
            path, report = ctx.mix.bake(form.base_spec(ctx, kw), form.read_slots(kw), name, int_or_none(rank))
            return str(path), f"Baked {shown_paths(report.summary(), ctx.ws.root)}; it is now in the Library."

        bake_btn.click(
            do_bake, [bake_name, bake_rank], [bake_file, message],
            inputs_kwargs=form.inputs(with_settings=False), **private, **GENERATE,
        )  # fmt: skip

        pickers = [slot.adapter for slot in slots]

        @ui
        def do_upload(path, *current):
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
            return {**out, message: f"Imported **{row.name}** into the library."}

        lora_upload.upload(do_upload, [lora_upload, *pickers], [*pickers, message], **private)

        @ui
        def refresh_choices():
            return {
                **{picker: gr.update(choices=adapter_choices(ctx.db)) for picker in pickers},
                base: gr.update(choices=base_choices(ctx.ws)),
                saved_recipes: gr.update(choices=recipe_choices(ctx.ws)),
            }

        tab.select(refresh_choices, None, [*pickers, base, saved_recipes], **private)
    return tab
