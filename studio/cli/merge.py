"""``studio merge a.safetensors:0.7 b.safetensors:0.3 --out blend.safetensors [--rank K] [--base M]``.

Bakes a blend into one kohya LoRA file: exact rank concatenation by default, or an SVD
to rank K (reporting what the truncation costs). Without ``--base`` the layer names and
shapes come from the full-size SD 1.5 / SD 2.1 / SDXL architecture the files were made
for, so no checkpoint is needed.
"""

from __future__ import annotations

import argparse

import torch

from studio.cli.generate import (
    add_blend_options,
    blend_from_args,
    check_files,
    load_base_model,
    parse_lora,
    reported_warnings,
)
from studio.mixer import bake_blend
from studio.models.shapes import shape_base_for

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="bake a weighted blend of adapters into one kohya LoRA file",
        description="Merge adapters into one kohya .safetensors. Without --rank the merge is exact "
        "(ranks add up); with --rank K each layer's blended update is cut to rank K by SVD.",
    )
    parser.add_argument("adapters", nargs="+", metavar="FILE[:WEIGHT]", help="adapters and their weights")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write")
    parser.add_argument("--rank", type=int, help="target rank (SVD); default: exact concatenation")
    parser.add_argument(
        "--precision", choices=list(PRECISIONS), default="fp32", help="tensor dtype (default fp32)"
    )
    parser.add_argument("--title", help="modelspec.title (default: the output file name)")
    add_blend_options(parser)
    parser.set_defaults(run=run, base=None)


def run(args: argparse.Namespace) -> int:
    with reported_warnings():
        check_files(args.adapters)
        base = (
            load_base_model(args.base)
            if args.base
            else shape_base_for([parse_lora(spec)[0] for spec in args.adapters])
        )
        items = blend_from_args(args, args.adapters, base)
        report = bake_blend(
            items,
            base.components,
            base.family,
            args.out,
            rank=args.rank,
            dtype=PRECISIONS[args.precision],
            title=args.title,
            prediction=base.prediction_type,
        )
    print(f"wrote {report.summary()}")
    return 0
