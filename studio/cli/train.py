"""``studio train``: train a LoRA from a captioned image folder and export it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from studio.config import TrainConfig
from studio.errors import StudioError
from studio.lora.targets import PRESETS

# (flag, TrainConfig field, argparse kwargs). Defaults live in TrainConfig, not here, so a
# config file's values survive unless a flag is actually given.
_OPTIONS: list[tuple[str, str, dict]] = [
    (
        "--base",
        "base",
        {"metavar": "MODEL", "help": "diffusers folder, .safetensors file, hub id, or 'default'"},
    ),
    (
        "--base-config",
        "base_config",
        {
            "metavar": "DIR",
            "help": "diffusers folder of the same architecture, for a single-file --base offline",
        },
    ),
    ("--output", "output", {"metavar": "FILE", "help": "adapter file to write (.safetensors)"}),
    (
        "--run-dir",
        "run_dir",
        {"metavar": "DIR", "help": "checkpoints, samples and logs (default: <output>-run)"},
    ),
    (
        "--format",
        "format",
        {"choices": ["kohya", "diffusers", "both"], "help": "file format (default kohya)"},
    ),
    ("--trigger", "trigger", {"metavar": "WORD", "help": "trigger word prepended to every caption"}),
    ("--preset", "preset", {"choices": PRESETS, "help": "layers to adapt (default cross-attn)"}),
    ("--rank", "rank", {"type": int, "metavar": "R", "help": "LoRA rank (default 16)"}),
    (
        "--alpha",
        "alpha",
        {"type": float, "metavar": "A", "help": "LoRA alpha; scale = alpha/rank (default rank/2)"},
    ),
    ("--steps", "steps", {"type": int, "metavar": "N", "help": "optimizer steps"}),
    (
        "--epochs",
        "epochs",
        {"type": int, "metavar": "E", "help": "epochs, when --steps is not given (default 10)"},
    ),
    ("--batch-size", "batch_size", {"type": int, "metavar": "B"}),
    ("--gradient-accumulation", "gradient_accumulation", {"type": int, "metavar": "N"}),
    ("--lr", "lr", {"type": float, "metavar": "LR", "help": "UNet learning rate (default 1e-4)"}),
    (
        "--te-lr",
        "te_lr",
        {"type": float, "metavar": "LR", "help": "text-encoder learning rate (default lr/2)"},
    ),
    ("--optimizer", "optimizer", {"choices": ["adamw", "adamw8bit"]}),
    (
        "--lr-scheduler",
        "lr_scheduler",
        {"metavar": "NAME", "help": "constant, constant_with_warmup, cosine, ..."},
    ),
    ("--warmup-steps", "warmup_steps", {"type": int, "metavar": "N"}),
    ("--noise-offset", "noise_offset", {"type": float, "metavar": "X"}),
    (
        "--min-snr-gamma",
        "min_snr_gamma",
        {"type": float, "metavar": "G", "help": "Min-SNR loss weighting (5 is common)"},
    ),
    (
        "--resolution",
        "resolution",
        {"type": int, "metavar": "R", "help": "training size (default: the model's)"},
    ),
    ("--bucket-step", "bucket_step", {"type": int, "metavar": "PX"}),
    ("--keep-tokens", "keep_tokens", {"type": int, "metavar": "N"}),
    ("--caption-dropout", "caption_dropout", {"type": float, "metavar": "P"}),
    ("--seed", "seed", {"type": int, "metavar": "S"}),
    ("--mixed-precision", "mixed_precision", {"choices": ["auto", "bf16", "fp16", "no"]}),
    ("--sample-every", "sample_every", {"type": int, "metavar": "N", "help": "preview images every N steps"}),
    ("--sample-prompt", "sample_prompts", {"action": "append", "metavar": "TEXT", "help": "repeatable"}),
    ("--checkpoint-every", "checkpoint_every", {"type": int, "metavar": "N"}),
    ("--resume", "resume", {"metavar": "DIR", "help": "run directory or checkpoint to continue from"}),
]
_SWITCHES = [
    ("--no-te", "train_text_encoder", False, "freeze the text encoder(s) and cache their outputs"),
    ("--gradient-checkpointing", "gradient_checkpointing", True, "trade compute for memory"),
    ("--low-memory", "low_memory", True, "checkpointing, cached text, 8-bit Adam, VAE/TE off the GPU"),
    ("--compile", "compile", True, "torch.compile the UNet (GPU; the first steps wait for the compiler)"),
    (
        "--cuda-graphs",
        "cuda_graphs",
        True,
        "compile and replay steps as CUDA graphs (fastest at small batches)",
    ),
    ("--channels-last", "channels_last", True, "NHWC activations (faster convolutions on GPUs)"),
    ("--no-fused-optimizer", "fused_optimizer", False, "plain AdamW instead of the fused kernel"),
    ("--no-overlap", "overlap_steps", False, "read every loss before starting the next step"),
    ("--random-crop", "random_crop", True, "random instead of center crops (disables latent caching)"),
    ("--shuffle-tags", "shuffle_tags", True, "shuffle comma-separated caption tags (after --keep-tokens)"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a style LoRA from a folder of captioned images",
        description="Train a LoRA adapter and export a kohya-compatible .safetensors file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "data", nargs="?", help="image folder (sidecar .txt/.caption captions, N_name subfolders)"
    )
    for flag, field, kwargs in _OPTIONS:
        parser.add_argument(flag, dest=field, **kwargs)
    for flag, field, value, help_text in _SWITCHES:
        parser.add_argument(flag, dest=field, action="store_const", const=value, help=help_text)
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON training config; flags override it")
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
    values = TrainConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
    fields = {field for _, field, _ in _OPTIONS} | {field for _, field, _, _ in _SWITCHES} | {"data"}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    return TrainConfig.from_dict(values)


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
    from studio.train.recipe import train

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
