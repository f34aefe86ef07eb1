"""``studio`` command line: one module per sub-command, each with ``add_parser`` and ``run``.

User errors (``StudioError``) print one line naming the file and exit 2; system errors
(disk full, permissions) print one line and exit 1; a traceback means a bug in the
studio, never in the user's input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from studio.environment import check_versions
from studio.errors import StudioError

# Sub-command modules under studio.cli, in the order `studio --help` lists them.
COMMANDS = ["train", "dataset", "caption", "inspect", "demo", "generate", "grid", "merge", "recipe", "app"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio", description="Train, blend and export Stable Diffusion style LoRA adapters."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"studio.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers warns on import about optional vision backends we never use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        check_versions()  # before the sub-commands import the libraries it checks
    except StudioError as exc:
        print(f"studio: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except StudioError as exc:
        print(f"studio: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, file-size limit, permissions: the machine's, not ours
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"studio: error: {where}{exc.strerror or exc} (nothing was overwritten)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("studio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
