"""``studio app``: start the web app (same as ``python app.py``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from studio.app.server import add_arguments

    parser = subparsers.add_parser("app", help="start the studio web app (train, mix, library)")
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from studio.app.server import config_from_args, launch

    launch(config_from_args(args))
    return 0
