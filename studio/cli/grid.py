"""``studio grid``: one labelled comparison image.

* weight x seed: ``studio grid "prompt" --lora a.safetensors --weights -1,0,1 --seeds 1,2,3``
  (rows vary ``--vary NAME``, by default the first adapter; other adapters stay as given);
* adapter x prompt: ``studio grid "prompt one" "prompt two" --lora a.safetensors --lora b.safetensors``
  (rows: the bare base, then each adapter alone);
* checkpoint x weight: ``studio grid "prompt" --run my_style-run --weights 0.5,1 --seed 7``
  (rows: the run's checkpoints, oldest first, then its final adapter).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from studio.adapters import load_adapter
from studio.atomic import atomic_path
from studio.cli.generate import (
    add_blend_options,
    add_compile_option,
    base_label,
    blend_from_args,
    check_files,
    fast_path,
    load_base_model,
    reported_warnings,
)
from studio.errors import StudioError
from studio.generate import SCHEDULERS, GenerationSession
from studio.grid import adapter_prompt_grid, checkpoint_weight_grid, weight_seed_grid
from studio.recipes import GenerationSettings


def number_list(value: str | None, option: str, kind=float) -> list:
    """``"-1,0,1"`` -> [-1.0, 0.0, 1.0]."""
    try:
        return [kind(part) for part in (value or "").split(",") if part.strip()]
    except ValueError:
        raise StudioError(f"{option} takes comma-separated numbers like -1,0,1, got {value!r}") from None


def run_adapters(run_dir: str) -> list[tuple[str, Path]]:
    """``(row label, kohya file)`` for each checkpoint of a run, then its final adapter if it exists.
    The checkpoint with the lowest validation loss (when the run computed one) is marked "best"."""
    from studio.config import TrainConfig
    from studio.training.checkpoint import checkpoint_adapters, list_checkpoints
    from studio.training.metrics import best_validation_step

    adapters = checkpoint_adapters(run_dir)
    config = Path(run_dir) / "config.toml"
    final = TrainConfig.load(config).output if config.is_file() else None
    final_step = None  # the final adapter is the run's last checkpoint's step
    if final and Path(final).is_file() and (found := list_checkpoints(Path(run_dir))):
        final_step = int(found[-1].name.removeprefix("step-"))
    best = best_validation_step(Path(run_dir), [s for s, _ in adapters] + [final_step] * bool(final_step))

    def label(text: str, step: int | None) -> str:
        return text + (f" best val {best[1]:.4f}" if best and step == best[0] else "")

    rows = [(label(f"step {step}", step), path) for step, path in adapters]
    if final and Path(final).is_file():
        rows.append((label("final", final_step), Path(final)))
    if not rows:
        raise StudioError(
            "no checkpoint adapters in this run", path=run_dir, hint="train with --checkpoint-every N"
        )
    return rows


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grid",
        help="render a labelled comparison grid (adapter weight x seed, or adapter x prompt)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "prompts", nargs="+", metavar="PROMPT", help="prompt(s); several make adapter x prompt columns"
    )
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]", help="add an adapter")
    parser.add_argument(
        "--run", dest="run_dir", metavar="DIR", help="a training run directory: rows are its checkpoints"
    )
    add_blend_options(parser)
    parser.add_argument("--vary", metavar="NAME", help="adapter whose weight varies (default: the first)")
    parser.add_argument("--weights", metavar="W,W,...", help="weights for the rows, e.g. -1,0,1")
    parser.add_argument("--seeds", metavar="S,S,...", help="seeds for the columns, e.g. 1,2,3")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--seed", type=int, help="seed for adapter x prompt grids (default: random)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--scheduler", choices=list(SCHEDULERS), default="euler-a")
    add_compile_option(parser)
    parser.add_argument("--out", required=True, metavar="PNG", help="the grid image to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    weights = number_list(args.weights, "--weights")
    seeds = number_list(args.seeds, "--seeds", int)
    if bool(args.lora) == bool(args.run_dir):
        raise StudioError("a grid needs --lora adapters, or --run with a training run directory")
    if args.run_dir and not weights:
        raise StudioError("a checkpoint grid needs --weights, e.g. --weights 0.5,1")
    if weights and len(args.prompts) > 1:
        raise StudioError("a weight x seed grid takes one prompt")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise StudioError("the output must be a .png file", path=out)
    fast = fast_path(args)
    with reported_warnings():
        files = [str(path) for _, path in run_adapters(args.run_dir)] if args.run_dir else args.lora
        check_files(files)
        base = load_base_model(args.base)
        session = GenerationSession(base.pipeline, base_label(args.base), base.family, fast=fast)
        if not args.run_dir:
            session.set_blend(blend_from_args(args, args.lora, base))
        settings = GenerationSettings(
            prompt=args.prompts[0],
            negative=args.negative,
            seed=args.seed if args.seed is not None else (seeds[0] if seeds else random.randrange(2**32)),
            steps=args.steps,
            guidance=args.guidance,
            width=args.width,
            height=args.height,
            scheduler=args.scheduler,
        )
        if args.run_dir:
            rows = [
                (label, load_adapter(path, base.components, base.family.adapter_family))
                for label, path in run_adapters(args.run_dir)
            ]
            image = checkpoint_weight_grid(session, rows, weights, settings)
            axes = (
                f"rows: checkpoints of {args.run_dir}; columns: weight {', '.join(f'{w:g}' for w in weights)}"
            )
        elif weights:
            vary = args.vary or session.items[0].adapter.name
            image = weight_seed_grid(session, vary, weights, seeds or [settings.seed], settings)
            axes = f"rows: {vary} weight {', '.join(f'{w:g}' for w in weights)}; columns: seeds"
        else:
            image = adapter_prompt_grid(session, args.prompts, settings)
            axes = "rows: base and each adapter alone; columns: prompts"
    info = PngInfo()
    info.add_text(
        "parameters",
        f"{axes}\nSteps: {settings.steps}, Sampler: {SCHEDULERS[settings.scheduler][2]}, "
        f"CFG scale: {settings.guidance:g}, Model: {Path(session.base).name}",
    )
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    print(f"wrote {out} ({image.width}x{image.height}; {axes})")
    return 0
