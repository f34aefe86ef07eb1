"""Mix tab: adapters on sliders over a base, generate, compare, save/load recipes, bake."""

from __future__ import annotations

import random

import gradio as gr

from studio.app import library
from studio.app.context import AppContext
from studio.app.mixing import Slot
from studio.app.models import DEFAULT, base_choices, base_label, resolve_base
from studio.app.ui.common import GENERATE, guard, int_or_none
from studio.errors import StudioError
from studio.generate import SCHEDULERS
from studio.recipes import GenerationSettings

SLOTS = 4
NONE = ""


def adapter_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [("(none)", NONE)] + [(f"{r.name} ({r.family}, rank {r.rank})", r.name) for r in ctx.db.adapters()]


def settings_from(
    prompt, negative, seed, steps, guidance, width, height, scheduler, batch=1
) -> GenerationSettings:
    if not (prompt or "").strip():
        raise StudioError("type a prompt")
    return GenerationSettings(
        prompt=prompt.strip(), negative=(negative or "").strip(), seed=int(seed or 0), steps=int(steps),
        guidance=float(guidance), width=int_or_none(width), height=int_or_none(height), batch=int(batch or 1),
        scheduler=scheduler,
    )  # fmt: skip


def recipe_choices(ctx: AppContext) -> list[str]:
    return sorted(path.stem for path in ctx.ws.recipes.glob("*.json"))


def slots_from(values: list) -> list[Slot]:
    """Flat widget values (adapter, enabled, weight, unet, te) x SLOTS -> slots."""
    return [
        Slot(
            values[i] or NONE,
            bool(values[i + 1]),
            float(values[i + 2]),
            float(values[i + 3]),
            float(values[i + 4]),
        )
        for i in range(0, len(values), 5)
    ]


def build(ctx: AppContext) -> gr.Tab:
    with gr.Tab("Mix", id="mix", elem_id="tab-mix") as tab:
        with gr.Row():
            base = gr.Dropdown(
                base_choices(ctx.ws), value=DEFAULT, label="Base model", elem_id="mix-base", scale=3
            )
            hub_id = gr.Textbox(label="…or a hub id", placeholder="owner/name", scale=2)
            lora_upload = gr.File(label="Upload a LoRA (.safetensors) into the library", file_types=[".safetensors"],
                                  elem_id="mix-upload", scale=2, height=120)  # fmt: skip
        slot_widgets = []
        with gr.Row():
            for i in range(SLOTS):
                with gr.Column(min_width=200, elem_id=f"mix-slot-{i}"):
                    adapter = gr.Dropdown(
                        adapter_choices(ctx), value=NONE, label=f"Adapter {i + 1}", elem_id=f"mix-adapter-{i}"
                    )
                    enabled = gr.Checkbox(value=True, label="enabled", elem_id=f"mix-enabled-{i}")
                    weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="weight", elem_id=f"mix-weight-{i}")
                    with gr.Accordion("UNet / text-encoder strength", open=False):
                        unet = gr.Slider(-2, 2, value=1.0, step=0.05, label="UNet", elem_id=f"mix-unet-{i}")
                        te = gr.Slider(
                            -2, 2, value=1.0, step=0.05, label="text encoder", elem_id=f"mix-te-{i}"
                        )
                slot_widgets += [adapter, enabled, weight, unet, te]
        with gr.Row():
            with gr.Column(scale=2):
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
                    height = gr.Number(
                        value=0, precision=0, label="Height (0 = native)", elem_id="mix-height"
                    )
                    scheduler = gr.Dropdown(
                        list(SCHEDULERS), value="euler-a", label="Scheduler", elem_id="mix-scheduler"
                    )
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
                        saved_recipes = gr.Dropdown(recipe_choices(ctx), value=None, label="Saved recipes",
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

        settings_inputs = [prompt, negative, seed, steps, guidance, width, height, scheduler]

        @guard
        def do_generate(base_choice, hub, rand, n, history, *values):
            slots = slots_from(list(values[: SLOTS * 5]))
            prompt_, negative_, seed_, *rest = values[SLOTS * 5 :]
            if rand:
                seed_ = random.randrange(2**31)
            settings = settings_from(prompt_, negative_, seed_, *rest, batch=n)
            paths = ctx.mix.generate(resolve_base(ctx.ws, base_choice, hub), slots, settings)
            blend = ", ".join(f"{s.adapter} {s.weight:g}" for s in slots if s.adapter and s.enabled)
            items = [
                (str(p), f"seed {settings.seed + i}" + (f" · {blend}" if blend else ""))
                for i, p in enumerate(paths)
            ]
            previous = [
                (item[0], item[1]) if isinstance(item, (list, tuple)) else item for item in history or []
            ]
            return [*items, *previous][:24], seed_, f"Generated {len(paths)} image(s), seed {settings.seed}."

        generate.click(
            do_generate, [base, hub_id, randomize, batch, gallery, *slot_widgets, *settings_inputs],
            [gallery, seed, message], api_visibility="private", **GENERATE,
        )  # fmt: skip

        @guard
        def do_grid(base_choice, hub, kind, grid_text, *values):
            slots = slots_from(list(values[: SLOTS * 5]))
            settings = settings_from(*values[SLOTS * 5 :])
            return str(
                ctx.mix.grid(resolve_base(ctx.ws, base_choice, hub), slots, settings, kind, grid_text or "")
            )

        grid_btn.click(
            do_grid, [base, hub_id, grid_kind, grid_values, *slot_widgets, *settings_inputs], grid_image,
            api_visibility="private", **GENERATE,
        )  # fmt: skip

        @guard
        def do_save_recipe(base_choice, hub, name, *values):
            slots = slots_from(list(values[: SLOTS * 5]))
            settings = settings_from(*values[SLOTS * 5 :])
            path = ctx.mix.save_recipe(resolve_base(ctx.ws, base_choice, hub), slots, settings, name)
            choices = gr.update(choices=recipe_choices(ctx), value=path.stem)
            return str(path), choices, f"Saved recipe {ctx.ws.relative(path)}."

        save_recipe.click(
            do_save_recipe, [base, hub_id, recipe_name, *slot_widgets, *settings_inputs],
            [recipe_file, saved_recipes, message],
            api_visibility="private", **GENERATE,
        )  # fmt: skip

        @guard
        def do_load_recipe(path):
            if not path:
                return [gr.skip()] * (2 + SLOTS * 5 + len(settings_inputs))
            recipe, slots = ctx.mix.load_recipe(path)
            s = recipe.settings
            slot_values = []
            for i in range(SLOTS):
                slot = slots[i] if i < len(slots) else Slot(NONE)
                slot_values += [
                    gr.update(choices=adapter_choices(ctx), value=slot.adapter),
                    slot.enabled, slot.weight, slot.unet, slot.text_encoder,
                ]  # fmt: skip
            label = base_label(ctx.ws, recipe.base)
            base_value = label if label in [v for _, v in base_choices(ctx.ws)] else DEFAULT
            return (
                gr.update(choices=base_choices(ctx.ws), value=base_value),
                f"Restored the recipe ({len(slots)} adapter(s), seed {s.seed}).",
                *slot_values,
                s.prompt, s.negative, s.seed, s.steps, s.guidance, s.width or 0, s.height or 0, s.scheduler,
            )  # fmt: skip

        recipe_outputs = [base, message, *slot_widgets, *settings_inputs]
        recipe_drop.upload(do_load_recipe, recipe_drop, recipe_outputs, api_visibility="private")
        load_saved.click(
            lambda name: do_load_recipe(str(ctx.ws.recipes / f"{name}.json") if name else None),
            saved_recipes, recipe_outputs, api_visibility="private",
        )  # fmt: skip

        @guard
        def do_bake(base_choice, hub, name, rank, *values):
            slots = slots_from(list(values))
            path, report = ctx.mix.bake(
                resolve_base(ctx.ws, base_choice, hub), slots, name, int_or_none(rank)
            )
            return str(path), f"Baked {report.summary()}; it is now in the Library."

        bake_btn.click(
            do_bake,
            [base, hub_id, bake_name, bake_rank, *slot_widgets],
            [bake_file, message],
            api_visibility="private",
            **GENERATE,
        )

        @guard
        def do_upload(path, *current):
            if not path:
                return [gr.skip()] * (SLOTS + 1)
            row = library.import_file(ctx.ws, ctx.db, path)
            choices = adapter_choices(ctx)
            free = next((i for i, value in enumerate(current) if not value), None)
            updates = [
                gr.update(choices=choices, value=row.name) if i == free else gr.update(choices=choices)
                for i in range(SLOTS)
            ]
            return (*updates, f"Imported **{row.name}** into the library.")

        adapter_dropdowns = slot_widgets[0::5]
        lora_upload.upload(
            do_upload,
            [lora_upload, *adapter_dropdowns],
            [*adapter_dropdowns, message],
            api_visibility="private",
        )
        tab.select(
            lambda: [gr.update(choices=adapter_choices(ctx))] * SLOTS
            + [gr.update(choices=base_choices(ctx.ws)), gr.update(choices=recipe_choices(ctx))],
            None, [*adapter_dropdowns, base, saved_recipes], api_visibility="private",
        )  # fmt: skip
    return tab
