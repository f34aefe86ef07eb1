"""``studio dataset check DIR``: report on a dataset folder without training on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from studio.data import DatasetConfig, check_dataset
from studio.errors import StudioError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("dataset", help="check a training image folder")
    actions = parser.add_subparsers(dest="dataset_action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="report counts, sizes, buckets, captions, duplicates and bad files",
        description="Scan DIR the way training would and report what it finds; nothing is changed.",
    )
    check.add_argument(
        "dir", type=Path, metavar="DIR", help="dataset folder (loose images and/or N_name sub-folders)"
    )
    check.add_argument("--trigger", metavar="WORD", help="trigger word prepended to every caption")
    check.add_argument(
        "--resolution", type=int, default=512, metavar="PX", help="training resolution (default 512)"
    )
    check.add_argument(
        "--bucket-step", type=int, default=64, metavar="PX", help="bucket size step in px (default 64)"
    )
    check.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="tokenizer folder (or a model folder with tokenizer/) for exact counts",
    )
    check.add_argument(
        "--tokenizer-max",
        type=int,
        default=77,
        metavar="N",
        help="token limit to flag captions against (default 77)",
    )
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = DatasetConfig(
        args.dir, trigger=args.trigger, resolution=args.resolution, bucket_step=args.bucket_step
    )
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    report = check_dataset(config, tokenizer=tokenizer, token_limit=args.tokenizer_max)
    print(report.format())
    if report.usable == 0:
        print(f"studio: error: no usable images in {config.root}", file=sys.stderr)
        return 2
    return 0


def _load_tokenizer(path: Path) -> Any:
    from transformers import CLIPTokenizer  # slow import; only when asked for

    folder = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise StudioError(
            f"cannot load a tokenizer ({exc})",
            path=folder,
            hint="give a tokenizer folder (tokenizer.json, or vocab.json + merges.txt)",
        ) from None
