"""``studio train``: train a LoRA from a captioned image folder and export it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from studio.config import RENAMED, TrainConfig
from studio.errors import StudioError
from studio.options import Show, Spec, specs
from studio.presets import PRESETS, get_preset


def _argument(spec: Spec) -> tuple[list[str], dict[str, Any]]:
    """argparse's arguments for one option. No defaults here: TrainConfig has them, and a config
    file's values must survive unless a flag is actually given."""
    o = spec.option
    shown = spec.kind is not bool and spec.default not in (None, "", [])
    help_text = f"{o.help} (default: {spec.default})" if shown else o.help
    if o.positional:
        return [spec.name], {"nargs": "?", "help": help_text}
    kwargs: dict[str, Any] = {"dest": spec.name, "help": help_text}
    if spec.kind is bool:
        return [spec.flag], {**kwargs, "action": "store_const", "const": not spec.default}
    if spec.kind is list:
        kwargs["action"] = "append"
    elif spec.kind is not str:
        kwargs["type"] = spec.kind
    if o.choices:
        kwargs["choices"] = o.choices
    elif o.metavar:
        kwargs["metavar"] = o.metavar
    return [spec.flag], kwargs


class _Renamed(argparse.Action):
    """An old flag kept for one release: it sets the new option and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(
            f"studio: warning: {option_string} is now {new}; the old name goes in the next release",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a style LoRA from a folder of captioned images",
        description="Train a LoRA adapter and export a kohya-compatible .safetensors file.",
        argument_default=argparse.SUPPRESS,
    )
    by_name = {spec.name: spec for spec in specs(TrainConfig)}
    for spec in by_name.values():
        if Show.CLI in spec.option.show:
            flags, kwargs = _argument(spec)
            parser.add_argument(*flags, **kwargs)
    for old, new in RENAMED.items():
        _, kwargs = _argument(by_name[new])
        kwargs.update(action=_Renamed, help=f"old name of {by_name[new].flag}, for one more release")
        parser.add_argument("--" + old.replace("_", "-"), **kwargs)
    # The flag's name before the issue-16 options (kept, unlisted: scripts use it).
    parser.add_argument("--warmup-steps", dest="warmup_steps", type=int, help=argparse.SUPPRESS)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--config", metavar="FILE", help="TOML or JSON training config; flags override it")
    start.add_argument(
        "--from-preset",
        metavar="NAME",
        help="start from a named preset, as the app's Train tab does; flags override it. "
        f"One of: {'; '.join(PRESETS)}",
    )
    parser.add_argument("--save-config", metavar="FILE", help="write the resolved config and exit")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="data-parallel processes, one per GPU (through torchrun); --batch-size is per GPU",
    )
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``--config`` file or ``--from-preset`` (if any), then the flags given; renamed keys
    print one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        values = {}
        if getattr(args, "config", None):
            values = TrainConfig.load(args.config).to_dict()
        elif getattr(args, "from_preset", None):
            values = get_preset(args.from_preset).apply().to_dict()
        fields = {spec.name for spec in specs(TrainConfig)}
        values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
        config = TrainConfig.from_dict(values, "command line")
    for warning in caught:
        print(f"studio: warning: {warning.message}", file=sys.stderr)
    return config


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if getattr(args, "save_config", None):
        config.save(args.save_config)
        print(f"wrote {args.save_config}")
        return 0
    if not config.data:
        raise StudioError("no dataset given", hint="studio train DATA --output FILE.safetensors")
    if not Path(config.data).is_dir():
        raise StudioError("dataset folder not found", path=config.data)
    if Path(config.output).exists() and not getattr(args, "overwrite", False) and not config.resume:
        raise StudioError(
            "output file exists", path=config.output, hint="pass --overwrite or another --output"
        )
    gpus = getattr(args, "gpus", None) or 1
    if getattr(args, "gpus", 1) < 1:
        raise StudioError("--gpus must be at least 1")
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(config, gpus)
    from studio.training.recipe import train

    result = train(config)
    if os.environ.get("RANK", "0") != "0":
        return 0  # the other data-parallel processes: rank 0 reports
    print(
        f"trained {result.steps} steps in {result.seconds:.1f}s ({result.images_per_second:.2f} img/s); "
        f"final loss {result.losses[-1]:.4f}"
        if result.losses
        else ""
    )
    for path in result.outputs:
        print(f"wrote {path}")
    return 0


def _launch(config: TrainConfig, processes: int) -> int:
    """Run this training in ``processes`` data-parallel processes (``torchrun``), which average
    their gradients every step. The resolved config travels as a file in the run directory."""
    import torch

    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise StudioError(
            f"--gpus {processes} but this machine has {torch.cuda.device_count()} GPU(s)",
            hint=f"use --gpus {torch.cuda.device_count()} or fewer",
        )
    run_dir = config.effective_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_config = run_dir / "launch.toml"
    config.save(launch_config)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "studio", "train", "--config", str(launch_config), "--overwrite",
    ]  # fmt: skip
    print(f"launching {processes} processes: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command)
