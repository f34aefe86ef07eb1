"""Comparison grids: one labelled image for adapter weight x seed, adapter x prompt, or
checkpoint x weight (the checkpoints of one training run).

Each cell is an ordinary generation through the session, so a grid row costs one slider
change (only that adapter's layers are re-patched) and the session's blend is put back
afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from PIL import Image, ImageDraw, ImageFont

from studio.adapters import Adapter
from studio.errors import StudioError
from studio.generate import GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.recipes import GenerationSettings

_PAD = 6
_BACKGROUND, _INK = (255, 255, 255), (0, 0, 0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def labelled_grid(
    cells: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
) -> Image.Image:
    """Paste ``cells[row][col]`` into a table with column labels on top, row labels on the left."""
    if not cells or len(cells) != len(row_labels) or any(len(r) != len(col_labels) for r in cells):
        raise ValueError("cells must be a non-empty len(row_labels) x len(col_labels) table")
    cell_w = max(im.width for row in cells for im in row)
    cell_h = max(im.height for row in cells for im in row)
    font = _font(max(10, min(24, cell_h // 6)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    label_w = max(size(t)[0] for t in row_labels) + 2 * _PAD
    col_w = max(cell_w, *(size(t)[0] + 2 * _PAD for t in col_labels))
    text_h = max(size(t)[1] for t in [*row_labels, *col_labels, title or "x"]) + 2 * _PAD
    top = text_h * (2 if title else 1)
    grid = Image.new("RGB", (label_w + col_w * len(col_labels), top + cell_h * len(row_labels)), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((_PAD, _PAD), title, fill=_INK, font=font)
    for c, text in enumerate(col_labels):
        draw.text(
            (label_w + c * col_w + (col_w - size(text)[0]) // 2, top - text_h + _PAD),
            text,
            fill=_INK,
            font=font,
        )
    for r, (text, row) in enumerate(zip(row_labels, cells)):
        y = top + r * cell_h
        draw.text((_PAD, y + (cell_h - size(text)[1]) // 2), text, fill=_INK, font=font)
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (label_w + c * col_w + (col_w - image.width) // 2, y))
    return grid


def _one(session: GenerationSession, settings: GenerationSettings) -> Image.Image:
    return session.generate(replace(settings, batch=1))[0].image


def weight_seed_grid(
    session: GenerationSession,
    adapter: str,
    weights: Sequence[float],
    seeds: Sequence[int],
    settings: GenerationSettings,
) -> Image.Image:
    """Rows: ``adapter`` at each weight (other adapters as they are); columns: seeds."""
    previous = list(session.items)
    item = next((i for i in previous if i.adapter.name == adapter), None)
    if item is None:
        raise StudioError(f"no adapter named {adapter!r} in the blend")
    rows = []
    try:
        for weight in weights:
            session.set_weights(adapter, replace(item.weights, weight=weight, enabled=True))
            rows.append([_one(session, replace(settings, seed=seed)) for seed in seeds])
    finally:
        session.set_blend(previous)
    return labelled_grid(
        rows, [f"{adapter} {w:g}" for w in weights], [f"seed {s}" for s in seeds], title=settings.prompt
    )


def adapter_prompt_grid(
    session: GenerationSession, prompts: Sequence[str], settings: GenerationSettings
) -> Image.Image:
    """Rows: the bare base, then each adapter of the blend alone at its own sliders; columns: prompts."""
    previous = list(session.items)
    off = [BlendItem(i.adapter, AdapterWeights(enabled=False)) for i in previous]
    rows, labels = [], []
    try:
        for row in range(len(previous) + 1):
            blend = list(off)
            if row:
                blend[row - 1] = replace(
                    previous[row - 1], weights=replace(previous[row - 1].weights, enabled=True)
                )
            session.set_blend(blend)
            rows.append([_one(session, replace(settings, prompt=prompt)) for prompt in prompts])
            labels.append(
                "base"
                if not row
                else f"{previous[row - 1].adapter.name} {previous[row - 1].weights.weight:g}"
            )
    finally:
        session.set_blend(previous)
    return labelled_grid(rows, labels, list(prompts), title=f"seed {settings.seed}")


def checkpoint_weight_grid(
    session: GenerationSession,
    checkpoints: Sequence[tuple[str, Adapter]],
    weights: Sequence[float],
    settings: GenerationSettings,
) -> Image.Image:
    """Rows: each ``(label, adapter)`` of one training run, alone; columns: its weight."""
    previous = list(session.items)
    rows = []
    try:
        for _, adapter in checkpoints:
            row = []
            for weight in weights:
                session.set_blend([BlendItem(adapter, AdapterWeights(weight=weight))])
                row.append(_one(session, settings))
            rows.append(row)
    finally:
        session.set_blend(previous)
    return labelled_grid(
        rows, [label for label, _ in checkpoints], [f"weight {w:g}" for w in weights], title=settings.prompt
    )
