"""``studio inspect FILE``: what a LoRA file is, which base it is for, and what its metadata says."""

from __future__ import annotations

import argparse
import json

from studio.formats.inspect import format_report, inspect_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show format, base model, ranks and metadata of any LoRA .safetensors file",
        description="Inspect a LoRA file (kohya, LyCORIS, diffusers or peft) without loading a model.",
    )
    parser.add_argument("file", help="the .safetensors file")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = inspect_file(args.file)
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0
