"""``studio generate "prompt" --base M --lora a.safetensors:0.8 ...``: images from a base plus a blend.

Also home of the option parsing the other blend commands (grid, merge) share:
``--lora FILE[:WEIGHT]``, ``--te-weight NAME=X``, ``--unet-weight NAME=X``,
``--blocks NAME=down:1,mid:0.5,up:0``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from studio.adapters import Adapter, AdapterWarning, load_adapter
from studio.errors import StudioError
from studio.formats.safetensors_io import read_header
from studio.generate import INDUCTOR_MODES, SCHEDULERS, FastPath, GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.recipes import GenerationSettings, load_blend, read_recipe

# argparse takes "-1,0.5" for an option name; let values like that through as numbers.
NEGATIVE_NUMBERS = re.compile(r"^-\.?\d[\d.,eE+-]*$")


def parse_lora(spec: str) -> tuple[str, float]:
    """``a.safetensors:0.8`` -> (path, 0.8); no ``:WEIGHT`` suffix -> weight 1.

    A suffix after the file's extension must be a number, so a typo such as ``:0.8x`` is
    reported as a bad weight rather than as a missing file.
    """
    path, sep, weight = spec.rpartition(":")
    if not sep or "/" in weight or "\\" in weight or (not weight and not path):
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        if Path(path).suffix:
            raise StudioError(
                f"bad adapter weight {weight!r} in {spec!r}: expected FILE:NUMBER, e.g. a.safetensors:0.8"
            ) from None
        return spec, 1.0
    if not path:
        raise StudioError(f"{spec!r} names no adapter file: expected FILE:NUMBER, e.g. a.safetensors:0.8")
    return path, value


def parse_assignments(values: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        name, sep, number = value.partition("=")
        if not sep or not name:
            raise StudioError(f"{option} takes NAME=VALUE, got {value!r}")
        out[name] = number
    return out


def parse_blocks(text: str) -> dict[str, float]:
    """``down:1,mid:0.5,up:0`` -> {"down": 1.0, "mid": 0.5, "up": 0.0}."""
    blocks = {}
    for part in filter(None, text.split(",")):
        block, sep, value = part.partition(":")
        try:
            blocks[block.strip()] = float(value)
        except ValueError:
            raise StudioError(f"--blocks takes BLOCK:WEIGHT pairs like down:1,up:0, got {part!r}") from None
        if not sep:
            raise StudioError(f"--blocks takes BLOCK:WEIGHT pairs like down:1,up:0, got {part!r}")
    return blocks


def number(value: str, option: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise StudioError(f"{option}: {value!r} is not a number") from None


def add_blend_options(parser: argparse.ArgumentParser) -> None:
    parser._negative_number_matcher = NEGATIVE_NUMBERS  # "--weights -1,0,1", "--te-weight b=-0.5"
    parser.add_argument(
        "--base", default="default", help="diffusers folder, .safetensors checkpoint, hub id or 'default'"
    )
    parser.add_argument(
        "--te-weight", action="append", metavar="NAME=X", help="text-encoder strength of one adapter"
    )
    parser.add_argument(
        "--unet-weight",
        action="append",
        metavar="NAME=X",
        help="UNet (SD3.5 / Flux: transformer) strength of one adapter",
    )
    parser.add_argument(
        "--blocks",
        action="append",
        metavar="NAME=down:X,mid:X,up:X",
        help="block weights of one adapter (SD3.5 / Flux: double:X,single:X; numbered: up.1:X, single.7:X)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail when an adapter has modules the base lacks"
    )


def add_compile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        nargs="?",
        const="reduce-overhead",
        metavar="MODE",
        help="compile the UNet, channels-last (a GPU's fast path; the first image waits for the compiler); "
        f"MODE: blocks (only the repeated blocks, inside the replayed graphs), {', '.join(INDUCTOR_MODES)} "
        "or a torch.compile backend (default reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--no-graphs",
        dest="graphs",
        action="store_false",
        help="launch each GPU kernel eagerly (by default a GPU replays the UNet and VAE decoder as CUDA graphs)",
    )


def fast_path(args: argparse.Namespace) -> FastPath:
    return FastPath.choose(args.compile, args.graphs)


@contextmanager
def reported_warnings() -> Iterator[None]:
    """Print adapter warnings (unmatched modules, changed files) as ``studio: warning:`` lines, as they happen."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", AdapterWarning)
        default = warnings.showwarning

        def show(message, category, *rest, **kwargs):
            if issubclass(category, AdapterWarning):
                print(f"studio: warning: {message}", file=sys.stderr)
            else:
                default(message, category, *rest, **kwargs)

        warnings.showwarning = show
        yield


def _lookup(table: dict[str, str], names: set[str]) -> str | None:
    return next((table[n] for n in names if n in table), None)


def blend_from_args(
    args: argparse.Namespace, specs: list[str], base, items: list[BlendItem] | None = None
) -> list[BlendItem]:
    """``items`` plus every ``FILE[:WEIGHT]``, with the per-adapter options (matched by file stem or path)."""
    te = parse_assignments(args.te_weight, "--te-weight")
    unet = parse_assignments(args.unet_weight, "--unet-weight")
    blocks = parse_assignments(args.blocks, "--blocks")
    items = list(items or [])
    used: set[str] = set()
    for spec in specs:
        path, weight = parse_lora(spec)
        adapter: Adapter = load_adapter(path, base.components, base.family.adapter_family, strict=args.strict)
        if any(item.adapter.name == adapter.name for item in items):
            raise StudioError(f"two adapters are named {adapter.name!r}; rename one file", path=path)
        names = {adapter.name, path}
        used |= names
        te_value, unet_value, block_value = (_lookup(table, names) for table in (te, unet, blocks))
        weights = AdapterWeights(
            weight=weight,
            text_encoder=1.0 if te_value is None else number(te_value, "--te-weight"),
            unet=1.0 if unet_value is None else number(unet_value, "--unet-weight"),
            blocks={} if block_value is None else parse_blocks(block_value),
        )
        items.append(BlendItem(adapter, weights))
    unknown = sorted((te.keys() | unet.keys() | blocks.keys()) - used)
    if unknown:
        raise StudioError(
            f"no --lora adapter named {', '.join(unknown)} (use the file name without .safetensors)"
        )
    return items


def check_files(specs: list[str]) -> None:
    """Fail on a missing, pickled or corrupt adapter file before the (slow) base model loads."""
    for spec in specs:
        read_header(parse_lora(spec)[0])


def load_base_model(spec: str):
    from studio.models.loader import load_base

    return load_base(spec)


def base_label(spec: str) -> str:
    """What a recipe records as the base: an absolute path when it is one, else the spec itself."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images from a base model plus a blend of adapters",
        description="Generate images with several LoRA adapters blended into the base weights.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt (optional with --recipe)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]", help="add an adapter")
    add_blend_options(parser)
    parser.add_argument("--recipe", metavar="PNG|JSON", help="start from a studio image's or file's recipe")
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--seed", type=int, help="seed (default: random; image i of a batch uses seed + i)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 25)")
    parser.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (default 7); Flux-dev: its distilled guidance (default 3.5)",
    )
    parser.add_argument("--width", type=int, help="width in pixels (default: the base's native size)")
    parser.add_argument("--height", type=int, help="height in pixels")
    parser.add_argument(
        "--scheduler",
        choices=list(SCHEDULERS),
        help="sampler (default euler-a; SD3.5 and Flux: flow-euler, their pipeline's own)",
    )
    parser.add_argument("--batch", type=int, help="images to make (default 1)")
    parser.add_argument(
        "--clip-skip",
        type=int,
        metavar="N",
        help="text-encoder layer from the end, A1111's count (default: what the adapters were trained with)",
    )
    add_compile_option(parser)
    parser.add_argument(
        "--out", required=True, metavar="PNG", help="output file; a batch writes NAME-0.png, NAME-1.png ..."
    )
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace, start: GenerationSettings | None) -> GenerationSettings:
    if start is None:
        if not args.prompt:
            raise StudioError("give a prompt (or --recipe)")
        start = GenerationSettings(prompt=args.prompt, seed=random.randrange(2**32))
    given = {
        "prompt": args.prompt,
        "negative": args.negative,
        "seed": args.seed,
        "steps": args.steps,
        "guidance": args.guidance,
        "width": args.width,
        "height": args.height,
        "scheduler": args.scheduler,
        "batch": args.batch,
        "clip_skip": getattr(args, "clip_skip", None),
    }
    return replace(start, **{k: v for k, v in given.items() if v is not None})


def output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise StudioError("the output must be a .png file", path=path)
    return [path] if count == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    fast = fast_path(args)
    with reported_warnings():
        recipe = read_recipe(args.recipe) if args.recipe else None
        check_files(args.lora)
        base_spec = args.base if recipe is None or args.base != "default" else recipe.base
        base = load_base_model(base_spec)
        if args.scheduler and args.scheduler not in base.family.samplers:
            raise StudioError(
                f"--scheduler {args.scheduler} does not sample {base.family.display_name}",
                hint=f"use {' or '.join(base.family.samplers)}",
            )
        items = load_blend(recipe, base.components, base.family.adapter_family, args.recipe) if recipe else []
        items = blend_from_args(args, args.lora, base, items)
        settings = settings_from_args(args, recipe.settings if recipe else None)
        if recipe is None and args.guidance is None:
            settings = replace(settings, guidance=base.family.default_guidance)
        paths = output_paths(args.out, settings.batch)
        session = GenerationSession(base.pipeline, base_label(base_spec), base.family, fast=fast)
        session.set_blend(items)
        for item in items:
            print(f"{item.adapter.name}: {item.adapter.report.summary()}")
            for line in item.adapter.info.lines():
                print(f"  {line}")
        for result, path in zip(session.generate(settings), paths):
            result.save(path)
            print(f"wrote {path} (seed {result.recipe.settings.seed})")
    return 0
