"""``TrainConfig``: every training option, declared once, saved and loaded as TOML or JSON.

Each field is an entry of the option table (``studio.options``): its type, default, allowed
values, help text and where it shows. The ``studio train`` flags, the app's advanced options
and ``validate`` are generated from it. Field names are the CLI flags with ``-`` turned into
``_``, so a config file, the command line and the Python API describe a run the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import warnings
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any

from studio.atomic import write_text
from studio.errors import StudioError
from studio.options import Show, option, specs

CLI, BASIC, ADVANCED = Show.CLI, Show.BASIC, Show.ADVANCED

LAYER_SETS = ("cross-attn", "attn", "full")  # studio.lora.targets.PRESETS, without importing torch
# studio.lora.networks builds them: LoRA, LoRA + ResNet convs (kohya LoCon), LyCORIS LoHa and LoKr.
NETWORKS = ("lora", "locon", "loha", "lokr")
# The diffusers schedules that need nothing beyond warmup and length (piecewise_constant needs rules).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
# studio.training.optim builds them; each but AdamW from its own package (an optional extra).
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor", "schedulefree")
# Old option name -> new name: accepted, with a one-line notice, for one release.
RENAMED = {"preset": "layers"}


@dataclass
class TrainConfig:
    # What to train on and where the result goes.
    data: str = option(
        "",
        "image folder (sidecar .txt/.caption captions, N_name subfolders)",
        show=CLI | BASIC,
        positional=True,
    )
    base: str = option(
        "default",
        "diffusers folder, .safetensors file, hub id, or 'default'",
        show=CLI | BASIC,
        metavar="MODEL",
    )
    base_config: str | None = option(
        None, "diffusers folder of the same architecture, for a single-file --base offline", metavar="DIR"
    )
    output: str = option("adapter.safetensors", "adapter file to write (.safetensors)", metavar="FILE")
    run_dir: str | None = option(
        None, "checkpoints, samples and logs (default: <output stem>-run)", metavar="DIR"
    )
    format: str = option("kohya", "file format", choices=("kohya", "diffusers", "both"))
    trigger: str | None = option(
        None, "trigger word prepended to every caption", show=CLI | BASIC, metavar="WORD"
    )

    # The adapter.
    layers: str = option(
        "cross-attn", "layers to adapt", choices=LAYER_SETS, show=CLI | ADVANCED, label="Layers"
    )
    rank: int = option(16, "LoRA rank", minimum=1, metavar="R", show=CLI | ADVANCED, label="Rank")
    alpha: float | None = option(
        None,
        "LoRA alpha; scale = alpha/rank (default: rank/2)",
        positive=True,
        metavar="A",
        show=CLI | ADVANCED,
        label="Alpha (empty = rank/2)",
    )
    network: str = option(
        "lora",
        "adapter type: lora, locon (lora + the ResNet 3x3 convs), LyCORIS loha or lokr",
        choices=NETWORKS,
        show=CLI | ADVANCED,
        label="Network",
    )
    dora: bool = option(
        False,
        "weight-decomposed LoRA (DoRA): a trained magnitude per output channel (lora, locon)",
        show=CLI | ADVANCED,
        label="DoRA",
    )
    conv_rank: int | None = option(
        None,
        "rank of the ResNet 3x3 convs, as kohya's conv_dim (default: --rank for locon; unset: no convs)",
        minimum=1,
        metavar="R",
        show=CLI | ADVANCED,
        label="Conv rank (empty = none, locon: rank)",
    )
    conv_alpha: float | None = option(
        None,
        "alpha of the 3x3 convs, as kohya's conv_alpha (default: conv rank / 2; adds the convs)",
        positive=True,
        metavar="A",
        show=CLI | ADVANCED,
        label="Conv alpha (empty = conv rank/2)",
    )
    lokr_factor: int | None = option(
        None,
        "LoKr's Kronecker factor, as LyCORIS' factor: the side of its small matrix (unset: as square as the layer allows)",
        minimum=1,
        metavar="F",
        show=CLI | ADVANCED,
        label="LoKr factor (empty = balanced)",
    )
    train_text_encoder: bool = option(
        True,
        "freeze the text encoder(s) and cache their outputs",
        flag="--no-te",
        show=CLI | ADVANCED,
        label="Train the text encoder",
    )

    # Length and batch.
    steps: int | None = option(
        None,
        "optimizer steps (default: --epochs)",
        minimum=1,
        metavar="N",
        show=CLI | ADVANCED,
        label="Steps (empty = by epochs)",
    )
    epochs: int | None = option(
        None, "epochs, when --steps is not given (default: 10)", minimum=1, metavar="E"
    )
    batch_size: int = option(
        1, "images per step (per GPU)", minimum=1, metavar="B", show=CLI | ADVANCED, label="Batch size"
    )
    gradient_accumulation: int = option(
        1,
        "steps whose gradients are summed before each update",
        minimum=1,
        metavar="N",
        show=CLI | ADVANCED,
        label="Gradient accumulation",
    )

    # Optimisation.
    lr: float = option(
        1e-4,
        "UNet learning rate",
        positive=True,
        metavar="LR",
        show=CLI | ADVANCED,
        label="UNet learning rate",
    )
    te_lr: float | None = option(
        None,
        "text-encoder learning rate (default: lr/2; Prodigy: lr)",
        positive=True,
        metavar="LR",
        show=CLI | ADVANCED,
        label="Text-encoder learning rate (empty = lr/2)",
    )
    optimizer: str = option(
        "adamw",
        "optimizer (adamw8bit: bitsandbytes; prodigy: prodigyopt, use --lr 1; schedulefree: schedulefree)",
        choices=OPTIMIZERS,
        show=CLI | ADVANCED,
        label="Optimizer",
    )
    prodigy_d_coef: float = option(
        1.0,
        "Prodigy's d_coef: scales its estimated step size",
        positive=True,
        metavar="X",
        show=CLI | ADVANCED,
        label="Prodigy d_coef",
    )
    prodigy_safeguard_warmup: bool = option(
        False,
        "Prodigy: keep its step-size estimate from growing during warmup (use with warmup)",
        show=CLI | ADVANCED,
        label="Prodigy safeguard warmup",
    )
    prodigy_bias_correction: bool = option(
        False,
        "Prodigy: Adam's bias correction (recommended for diffusion models)",
        show=CLI | ADVANCED,
        label="Prodigy bias correction",
    )
    lr_scheduler: str = option(
        "constant_with_warmup",
        "learning-rate schedule",
        choices=LR_SCHEDULERS,
        show=CLI | ADVANCED,
        label="LR schedule",
    )
    warmup_steps: int = option(
        0,
        "steps the learning rate ramps up over",
        minimum=0,
        flag="--lr-warmup-steps",
        metavar="N",
        show=CLI | ADVANCED,
        label="Warmup steps",
    )
    ema: bool = option(
        False,
        "keep an exponential moving average of the adapter weights and export it",
        show=CLI | ADVANCED,
        label="EMA of the adapter weights",
    )
    ema_decay: float = option(
        0.999,
        "EMA decay per step (diffusers' EMAModel, which ramps it up as (1+t)/(10+t))",
        minimum=0,
        maximum=0.99999,
        metavar="D",
        show=CLI | ADVANCED,
        label="EMA decay",
    )
    weight_decay: float = option(1e-2, "AdamW weight decay", minimum=0, show=Show.API)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", minimum=0, show=Show.API)

    # Loss.
    noise_offset: float = option(
        0.0,
        "noise offset (0.0357 is common for SDXL)",
        metavar="X",
        show=CLI | ADVANCED,
        label="Noise offset",
    )
    min_snr_gamma: float | None = option(
        None,
        "Min-SNR loss weighting (5 is common; default: off)",
        positive=True,
        metavar="G",
        show=CLI | ADVANCED,
        label="Min-SNR gamma (empty = off)",
    )

    # SDXL derivatives (NoobAI v-pred, Illustrious, Pony) and other bases that differ from their family.
    v_prediction: bool = option(
        False,
        "train the v-prediction objective (read from the base where its config or metadata says so)",
        show=CLI | ADVANCED,
        label="V-prediction",
    )
    zero_terminal_snr: bool = option(
        False,
        "rescale the noise schedule to zero terminal SNR (with v-prediction, as NoobAI v-pred)",
        show=CLI | ADVANCED,
        label="Zero terminal SNR",
    )
    clip_skip: int | None = option(
        None,
        "condition on the text encoder's hidden state N layers from the end (SD 1/2: then the final "
        "layer norm, as A1111; SDXL uses 2 already)",
        minimum=1,
        maximum=12,
        metavar="N",
        show=CLI | ADVANCED,
        label="Clip skip (empty = the model's default)",
    )

    # Images and captions.
    resolution: int | None = option(
        None,
        "training size in px (default: the model's, 512/768/1024)",
        minimum=64,
        metavar="R",
        show=CLI | ADVANCED,
        label="Resolution (px; empty = the model's native size)",
    )
    bucket_step: int = option(64, "aspect-ratio bucket size step in px", minimum=8, metavar="PX")
    random_crop: bool = option(False, "random instead of center crops (disables latent caching)")
    reg_dir: str | None = option(
        None, "regularisation images (kohya N_class folders), mixed into every epoch", metavar="DIR"
    )
    prior_weight: float = option(1.0, "loss weight of the regularisation images", minimum=0)
    masked_loss: bool = option(
        False, "weigh the loss per pixel by the image's alpha channel or masks/NAME.png in the dataset"
    )
    shuffle_tags: bool = option(
        False,
        "shuffle comma-separated caption tags (after --keep-tokens)",
        show=CLI | ADVANCED,
        label="Shuffle comma-separated tags",
    )
    keep_tokens: int = option(
        0,
        "leading caption tags kept in place when shuffling",
        minimum=0,
        metavar="N",
        show=CLI | ADVANCED,
        label="Keep first N tags in place",
    )
    caption_dropout: float = option(
        0.0,
        "probability of training on an empty caption",
        minimum=0,
        maximum=1,
        metavar="P",
        show=CLI | ADVANCED,
        label="Caption dropout (0-1)",
    )

    # Runtime.
    seed: int = option(0, "random seed", metavar="S", show=CLI | ADVANCED, label="Seed")
    mixed_precision: str = option(
        "auto",
        "auto = bf16 on a capable GPU, else fp32",
        choices=("auto", "no", "fp16", "bf16"),
        show=CLI | ADVANCED,
        label="Mixed precision",
    )
    gradient_checkpointing: bool = option(
        False, "trade compute for memory", show=CLI | ADVANCED, label="Gradient checkpointing"
    )

    # Speed and memory. Each switch keeps the loss of the plain path (tests/test_train_speed.py).
    compile: bool = option(False, "torch.compile the UNet (GPU; the first steps wait for the compiler)")
    cuda_graphs: bool = option(False, "compile and replay steps as CUDA graphs (fastest at small batches)")
    compile_blocks: bool = option(
        False, "compile only the UNet's repeated blocks, inside the replayed steps (GPU; a shorter compile)"
    )
    graph_step: bool = option(
        True, "launch every step's kernels one by one rather than replaying the step as a CUDA graph (GPU)"
    )
    channels_last: bool = option(False, "NHWC activations (faster convolutions on GPUs)")
    adapter_input_casts: bool = option(
        False,
        "cast each adapter layer's input to fp32 as peft does (under bf16/fp16: the same numbers, more copies)",
    )
    fused_optimizer: bool = option(True, "plain AdamW instead of the fused kernel")
    overlap_steps: bool = option(True, "read every loss before starting the next step", flag="--no-overlap")
    low_memory: bool = option(False, "checkpointing, cached text, 8-bit Adam, VAE/TE off the GPU")
    fp8_base: bool = option(
        False,
        "store the frozen denoiser's weights in fp8, computed in the training precision (half a bf16 base's memory)",
        show=CLI | ADVANCED,
        label="fp8 base (less memory)",
    )

    # Side outputs.
    sample_every: int = option(
        0,
        "preview images every N steps (0 = never)",
        minimum=0,
        metavar="N",
        show=CLI | ADVANCED,
        label="Sample every N steps (0 = never)",
    )
    sample_prompts: list[str] = option(
        [],
        "a preview prompt; repeatable (default: the trigger and two captions)",
        flag="--sample-prompt",
        metavar="TEXT",
        show=CLI | ADVANCED,
        label="Sample prompts (one per line; empty = trigger + two captions)",
    )
    sample_steps: int = option(
        20,
        "denoising steps per preview image",
        minimum=1,
        metavar="N",
        show=CLI | ADVANCED,
        label="Sampling steps",
    )
    validation_split: float = option(
        0.0,
        "fraction of the images held out for a validation loss (0 = none)",
        minimum=0,
        maximum=0.5,
        metavar="F",
        show=CLI | ADVANCED,
        label="Validation split (0-0.5; 0 = none)",
    )
    validation_dir: str | None = option(
        None,
        "a folder of captioned images for the validation loss, instead of a split",
        metavar="DIR",  # CLI only: the app's advanced widgets have no folder field (a path is text)
    )
    validate_every: int = option(
        0,
        "validation loss every N steps (0 = at each checkpoint and the end)",
        minimum=0,
        metavar="N",
        show=CLI | ADVANCED,
        label="Validate every N steps (0 = at checkpoints)",
    )
    log_with: str = option(
        "none",
        "also log losses, lr, validation loss and previews to TensorBoard or W&B (offline), in <run>/logs",
        choices=("none", "tensorboard", "wandb"),
        show=CLI | ADVANCED,
        label="Log to",
    )
    checkpoint_every: int = option(
        0,
        "save a resumable checkpoint every N steps (0 = only at the end)",
        minimum=0,
        metavar="N",
        show=CLI | ADVANCED,
        label="Checkpoint every N steps (0 = only at the end)",
    )
    keep_checkpoints: int = option(3, "checkpoints kept (the newest)", minimum=1, metavar="N")
    resume: str | None = option(None, "run directory or checkpoint to continue from", metavar="DIR")

    preset: InitVar[str | None] = None  # the old name of ``layers``, for one release

    def __post_init__(self, preset: str | None) -> None:
        if preset is not None:
            _renamed("preset", "TrainConfig(preset=...)")
            self.layers = preset

    def validate(self, source: str | None = None) -> None:
        """Every value against its option's type, choices and bounds; one line naming each problem."""
        problems = [p for spec in specs(type(self)) if (p := spec.problem(getattr(self, spec.name)))]
        problems += self.conflicts()
        if problems:
            raise StudioError("invalid training options: " + "; ".join(problems), path=source)

    def conflicts(self) -> list[str]:
        """Combinations of legal values that cannot train together, one phrase each."""
        found = []
        if self.optimizer == "schedulefree" and self.lr_scheduler not in ("constant", "constant_with_warmup"):
            found.append(
                f"--optimizer schedulefree replaces the learning-rate schedule (got --lr-scheduler "
                f"{self.lr_scheduler}); use --lr-scheduler constant (it warms up over --lr-warmup-steps itself)"
            )
        if self.ema and self.optimizer == "schedulefree":
            found.append(
                "--ema with --optimizer schedulefree: schedule-free AdamW already exports an average "
                "of its weights; drop --ema or use another optimizer"
            )
        if self.validation_split and self.validation_dir:
            found.append("--validation-split and --validation-dir both given; pick one")
        if self.optimizer == "prodigy" and self.te_lr not in (None, self.lr):
            found.append(
                "--optimizer prodigy estimates one step size for all parameter groups; "
                "leave --te-lr unset or equal to --lr"
            )
        if self.compile_blocks and (self.compile or self.cuda_graphs):
            whole = "--compile" if self.compile else "--cuda-graphs"
            found.append(
                f"--compile-blocks with {whole}: {whole} already compiles the whole UNet; pick one "
                "(--compile-blocks compiles less, sooner)"
            )
        found += self.network_conflicts()
        return found

    def network_conflicts(self) -> list[str]:
        """Network options that cannot go together (peft has no DoRA form of LoHa or LoKr)."""
        found = []
        if self.dora and self.network in ("loha", "lokr"):
            found.append(f"--dora applies to lora and locon; peft has no DoRA form of {self.network}")
        if self.lokr_factor is not None and self.network != "lokr":
            found.append(f"--lokr-factor applies to --network lokr, not {self.network}")
        if self.network in ("loha", "lokr") and self.format != "kohya":
            found.append(
                f"--format {self.format}: diffusers/peft files hold LoRA only; {self.network} is written "
                "as a kohya/LyCORIS file (--format kohya)"
            )
        if self.dora and self.format != "kohya":
            found.append(
                f"--format {self.format} with --dora: the studio writes DoRA (dora_scale) in kohya/LyCORIS "
                "files only; use --format kohya"
            )
        return found

    @property
    def effective_conv_rank(self) -> int | None:
        """Rank of the 3x3 convs: ``conv_rank``, else ``rank`` for locon or a given conv alpha
        (asking for a conv alpha asks for convs), else None: no convs."""
        if self.conv_rank is not None:
            return self.conv_rank
        return self.rank if self.network == "locon" or self.conv_alpha is not None else None

    @property
    def effective_conv_alpha(self) -> float | None:
        rank = self.effective_conv_rank
        if rank is None:
            return None
        return float(rank) / 2 if self.conv_alpha is None else float(self.conv_alpha)

    @property
    def effective_alpha(self) -> float:
        return float(self.rank) / 2 if self.alpha is None else float(self.alpha)

    @property
    def effective_te_lr(self) -> float:
        """``te_lr``, else half the UNet's; Prodigy has one step size for all groups (lr)."""
        if self.te_lr is not None:
            return self.te_lr
        return self.lr if self.optimizer == "prodigy" else self.lr / 2

    @property
    def effective_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        out = Path(self.output)
        return out.with_name(out.stem + "-run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        values = {k: v for k, v in self.to_dict().items() if v is not None}
        text = json.dumps(values, indent=2) if path.suffix == ".json" else _to_toml(values)
        write_text(path, text)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = None) -> TrainConfig:
        """A validated config from plain values (a config file, the app's form, a stored job)."""
        values = dict(values)
        for old, new in RENAMED.items():
            if old in values:
                _renamed(old, source)
                values[new] = values.pop(old)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "see `studio train --help`: flags, - as _"
                raise StudioError(f"unknown option {key!r} ({hint})", path=source)
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise StudioError("config file not found", path=path) from None
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise StudioError(f"cannot parse config ({exc})", path=path) from None
        if not isinstance(values, dict):
            raise StudioError("a config must be a table of options", path=path)
        return cls.from_dict(values, str(path))


def _renamed(old: str, where: str | None) -> None:
    """The one-line notice for an old option name (the CLI prints it as a warning line)."""
    text = f"{old!r} is now {RENAMED[old]!r}; the old name goes in the next release"
    warnings.warn(f"{where}: {text}" if where else text, FutureWarning, stacklevel=3)


def _to_toml(values: dict[str, Any]) -> str:
    """Flat TOML for our flat config (strings, numbers, booleans, lists of strings)."""
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and string arrays are valid TOML
    return "\n".join(lines) + "\n"
