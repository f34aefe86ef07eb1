"""``studio recipe show img.png``: how a studio image (or recipe file) was made, and whether its adapters are still there."""

from __future__ import annotations

import argparse

from studio.adapters import file_sha256
from studio.recipes import Recipe, read_recipe


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recipe", help="show the recipe stored in a studio PNG or recipe file")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print base, adapters with their sliders, prompt and settings")
    show.add_argument("file", help="a PNG written by the studio, or a recipe .json")
    show.add_argument("--json", action="store_true", help="print the raw recipe JSON")
    show.set_defaults(run=run)


def adapter_status(path: str, sha256: str) -> str:
    try:
        return "ok" if file_sha256(path) == sha256 else "CHANGED since (sha256 differs)"
    except OSError:
        return "MISSING"


def describe(recipe: Recipe) -> str:
    s = recipe.settings
    lines = [f"base: {recipe.base}", f"prompt: {s.prompt}"]
    if s.negative:
        lines.append(f"negative: {s.negative}")
    lines.append(
        f"seed {s.seed}, {s.steps} steps, {s.scheduler}, guidance {s.guidance:g}, {s.width}x{s.height}, batch {s.batch}"
    )
    for entry in recipe.adapters:
        w = entry.weights
        blocks = f", blocks {w.blocks}" if w.blocks else ""
        state = "" if w.enabled else " (disabled)"
        lines.append(
            f"adapter {entry.name}{state}: weight {w.weight:g}, unet {w.unet:g}, text encoder {w.text_encoder:g}{blocks}"
        )
        lines.append(f"  {entry.path} [{adapter_status(entry.path, entry.sha256)}]")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    recipe = read_recipe(args.file)
    print(recipe.to_json() if args.json else describe(recipe))
    return 0
