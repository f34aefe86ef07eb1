"""``TrainConfig``: every training option in one dataclass, saved and loaded as TOML or JSON.

Field names are the CLI flags with ``-`` turned into ``_``, so a config file, the
command line and the Python API describe a run the same way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from studio.atomic import write_text
from studio.errors import StudioError


@dataclass
class TrainConfig:
    # What to train on and where the result goes.
    data: str = ""
    base: str = "default"
    base_config: str | None = None  # diffusers folder describing a single-file --base (needed offline)
    output: str = "adapter.safetensors"
    run_dir: str | None = None  # checkpoints, samples, logs; default: "<output stem>-run" beside output
    format: str = "kohya"  # kohya | diffusers | both
    trigger: str | None = None

    # The adapter.
    preset: str = "cross-attn"  # cross-attn | attn | full
    rank: int = 16
    alpha: float | None = None  # None -> rank / 2 (scale 0.5, the common style-LoRA choice)
    train_text_encoder: bool = True

    # Length and batch.
    steps: int | None = None
    epochs: int | None = None  # used when steps is None; default 10 epochs
    batch_size: int = 1
    gradient_accumulation: int = 1

    # Optimisation.
    lr: float = 1e-4
    te_lr: float | None = None  # None -> lr / 2
    optimizer: str = "adamw"  # adamw | adamw8bit
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization scheduler name
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0

    # Loss.
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None

    # Images and captions.
    resolution: int | None = None  # None -> the family's native size (512 / 768 / 1024)
    bucket_step: int = 64
    random_crop: bool = False
    shuffle_tags: bool = False
    keep_tokens: int = 0
    caption_dropout: float = 0.0

    # Runtime.
    seed: int = 0
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16 ; auto = bf16 on a capable GPU, else fp32
    gradient_checkpointing: bool = False

    # Speed and memory. Each switch keeps the loss of the plain path (tests/test_train_speed.py).
    compile: bool = False  # torch.compile the UNet; the first step waits for the compiler
    cuda_graphs: bool = False  # compile and replay each step as CUDA graphs: no launch overhead
    channels_last: bool = False  # NHWC UNet activations: faster convolutions on tensor-core GPUs
    fused_optimizer: bool = True  # AdamW as one fused kernel per step instead of a loop over tensors
    overlap_steps: bool = True  # read each loss one step late, so the GPU never waits for the CPU
    low_memory: bool = False  # checkpointing + cached text + 8-bit Adam + VAE/text encoder off the GPU

    # Side outputs.
    sample_every: int = 0  # 0 = never
    sample_prompts: list[str] = field(default_factory=list)  # default: the trigger plus two captions
    sample_steps: int = 20
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 3
    resume: str | None = None

    def validate(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append("rank must be >= 1")
        if self.steps is not None and self.steps < 1:
            problems.append("steps must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            problems.append("epochs must be >= 1")
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            problems.append("batch size and gradient accumulation must be >= 1")
        if self.lr <= 0:
            problems.append("learning rate must be > 0")
        if self.format not in ("kohya", "diffusers", "both"):
            problems.append("format must be kohya, diffusers or both")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            problems.append("mixed precision must be auto, no, fp16 or bf16")
        if self.optimizer not in ("adamw", "adamw8bit"):
            problems.append("optimizer must be adamw or adamw8bit")
        if not 0 <= self.caption_dropout <= 1:
            problems.append("caption dropout must be between 0 and 1")
        if problems:
            raise StudioError("invalid training options: " + "; ".join(problems))

    @property
    def effective_alpha(self) -> float:
        return float(self.rank) / 2 if self.alpha is None else float(self.alpha)

    @property
    def effective_te_lr(self) -> float:
        return self.lr / 2 if self.te_lr is None else self.te_lr

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
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise StudioError(f"unknown option(s) {', '.join(unknown)}", path=source)
        return cls(**values)

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
        return cls.from_dict(values, str(path))


def _to_toml(values: dict[str, Any]) -> str:
    """Flat TOML for our flat config (strings, numbers, booleans, lists of strings)."""
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and string arrays are valid TOML
    return "\n".join(lines) + "\n"
