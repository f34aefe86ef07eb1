"""``studio caption DIR``: write a sidecar .txt caption for every uncaptioned image of a folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from studio.errors import StudioError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption the images of a folder (sidecar .txt files)",
        description="Write DIR/NAME.txt for each image; existing captions are kept unless --overwrite.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of images (sub-folders too)")
    parser.add_argument(
        "--captioner",
        default="default",
        metavar="NAME_OR_PATH",
        help="'default' (the embedded toyworld captioner), a hub id (BLIP, wd-*-tagger) or a model folder",
    )
    parser.add_argument(
        "--style",
        choices=("sentence", "tags"),
        help="sentences or comma-separated tags (default: the captioner's)",
    )
    parser.add_argument("--prefix", metavar="TRIGGER", help="put 'TRIGGER, ' in front of every new caption")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument(
        "--only-missing",
        dest="overwrite",
        action="store_false",
        help="caption only images with no .txt/.caption yet (default)",
    )
    keep.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace existing captions")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per call (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=40,
        metavar="N",
        help="most generated tokens (sentence captioners) or tags (taggers); default 40",
    )
    parser.add_argument(
        "--tag-threshold", type=float, default=0.35, metavar="P", help="taggers: lowest tag score kept (0.35)"
    )
    parser.add_argument(
        "--exclude-tags", default="", metavar="TAGS", help="taggers: comma-separated tags never written"
    )
    parser.set_defaults(run=run, overwrite=False)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    from studio.captioning import CaptionerOptions, caption_folder, find_images, load_captioner

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value < 1:
            raise StudioError(f"{flag} must be at least 1 (got {value})")
    if not 0.0 <= args.tag_threshold <= 1.0:
        raise StudioError(f"--tag-threshold must be between 0 and 1 (got {args.tag_threshold})")
    if not find_images(args.dir):
        raise StudioError("no images to caption", path=args.dir, hint="png, jpg, webp, bmp or gif files")
    options = CaptionerOptions(
        style=args.style,
        device=_device(args.device),
        max_length=args.max_length,
        tag_threshold=args.tag_threshold,
        exclude_tags=tuple(t.strip() for t in args.exclude_tags.split(",") if t.strip()),
    )
    started = time.monotonic()
    captioner = load_captioner(args.captioner, options)
    report = caption_folder(
        args.dir, captioner, prefix=args.prefix, overwrite=args.overwrite, batch_size=args.batch_size
    )
    for problem in report.failed:
        print(f"studio: skipped {problem.path}: {problem.reason}", file=sys.stderr)
    print(f"{report.summary(args.captioner)} ({time.monotonic() - started:.1f} s)")
    return 2 if report.failed and not report.written and not report.kept else 0
