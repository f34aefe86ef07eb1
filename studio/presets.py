"""Named training presets: sensible starting points a user picks before touching any knob.

A preset is a partial ``TrainConfig``: the app applies it
first, then the user's own choices on top. Values follow the community consensus for style
LoRAs (see ``../shared/reference``): rank 16, alpha rank/2, UNet lr 1e-4, TE lr half that.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from studio.config import TrainConfig
from studio.errors import StudioError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any] = field(default_factory=dict)
    family: str | None = None  # the base family it is written for (a studio.families id)

    def apply(self, config: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
        """A new config: ``config`` (or defaults), then this preset, then ``overrides``."""
        base = config or TrainConfig()
        return dataclasses.replace(base, **{**self.values, **overrides})


# SDXL derivatives: SDXL's style settings, plus what each model was trained with. Memory: as
# "Style (SDXL)"; with --low-memory SDXL at batch 1 peaked at 9.9 GB (BENCHMARKS.md).
_SDXL_STYLE = {
    "layers": "cross-attn", "rank": 16, "alpha": 8.0, "resolution": 1024, "steps": 1500, "batch_size": 2,
    "lr": 1e-4, "train_text_encoder": False, "min_snr_gamma": 5.0, "gradient_checkpointing": True,
    "warmup_steps": 100, "sample_every": 250, "checkpoint_every": 250,
}  # fmt: skip
# The embedded model's style settings that bench/style_sweep.py varies: 1,000 steps at batch 4.
# The network-type presets are these plus what the sweep found (BENCHMARKS.md, style learning).
SWEEP_BASE = {
    "base": "default", "layers": "full", "rank": 8, "alpha": 8.0, "resolution": 128, "steps": 1000,
    "caption_dropout": 0.2, "batch_size": 4, "lr": 1e-3, "te_lr": 5e-4, "sample_every": 250,
    "sample_steps": 20, "checkpoint_every": 250,
}  # fmt: skip
# The Quick demo: 600 steps at batch 2, rank 16, twice the rates; it passes the same style checks
# in about half the CPU time of the sweep base (its variant "bs2-r16-lr2e-3-s600").
_QUICK = {
    **SWEEP_BASE, "batch_size": 2, "rank": 16, "alpha": 16.0, "lr": 2e-3, "te_lr": 1e-3, "steps": 600,
    "sample_every": 200, "checkpoint_every": 200,
}  # fmt: skip
# SD3.5 and Flux: attention LoRA on the transformer, T5 and CLIP frozen and cached, batch 1 with
# the encoders parked (low memory), as diffusers' and ai-toolkit's style examples train them.
_FLOW_STYLE = {
    "layers": "attn", "rank": 16, "alpha": 16.0, "resolution": 1024, "steps": 1500, "batch_size": 1,
    "lr": 1e-4, "train_text_encoder": False, "low_memory": True, "warmup_steps": 100,
    "sample_every": 250, "checkpoint_every": 250,
}  # fmt: skip
_MEMORY = "Batch 2 with checkpointing wants a 24 GB GPU; on 12 GB add --low-memory and batch 1 (9.9 GB peak)."

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "Style (SD 1.5)",
            "512 px, rank 16, UNet cross-attention + text encoder, 1,500 steps at batch 4.",
            {
                "layers": "cross-attn",
                "rank": 16,
                "alpha": 8.0,
                "resolution": 512,
                "steps": 1500,
                "batch_size": 4,
                "lr": 1e-4,
                "te_lr": 5e-5,
                "lr_scheduler": "constant_with_warmup",
                "warmup_steps": 100,
                "min_snr_gamma": 5.0,
                "sample_every": 250,
                "checkpoint_every": 250,
            },
            family="sd1",
        ),
        Preset(
            "Style (SDXL)",
            "1024 px, rank 16, UNet only with cached text, gradient checkpointing, 1,500 steps.",
            {
                "layers": "cross-attn",
                "rank": 16,
                "alpha": 8.0,
                "resolution": 1024,
                "steps": 1500,
                "batch_size": 2,
                "lr": 1e-4,
                "train_text_encoder": False,
                "noise_offset": 0.0357,
                "min_snr_gamma": 5.0,
                "gradient_checkpointing": True,
                "warmup_steps": 100,
                "sample_every": 250,
                "checkpoint_every": 250,
            },
            family="sdxl",
        ),
        Preset(
            "Style (Illustrious XL)",
            "Illustrious-based SDXL: clip skip 2 (SDXL's penultimate layer), epsilon. " + _MEMORY,
            {**_SDXL_STYLE, "clip_skip": 2},
        ),
        Preset(
            "Style (NoobAI-XL v-pred)",
            "NoobAI-XL V-Pred: v-prediction with zero-terminal-SNR betas, clip skip 2, no noise offset. "
            + _MEMORY,
            {**_SDXL_STYLE, "clip_skip": 2, "v_prediction": True, "zero_terminal_snr": True},
        ),
        Preset(
            "Style (Pony XL)",
            "Pony Diffusion XL: clip skip 2; keep its score_9-style tags in the captions. " + _MEMORY,
            {**_SDXL_STYLE, "clip_skip": 2},
        ),
        Preset(
            "Prodigy",
            "Prodigy sets its own step size: lr 1.0 for UNet and text encoder, decoupled weight decay "
            "0.01, bias correction and safeguard warmup (its README's advice for diffusion models), "
            "cosine schedule. Combine with a model preset.",
            {
                "optimizer": "prodigy",
                "lr": 1.0,
                "te_lr": 1.0,
                "weight_decay": 0.01,
                "prodigy_d_coef": 1.0,
                "prodigy_safeguard_warmup": True,
                "prodigy_bias_correction": True,
                "lr_scheduler": "cosine",
                "warmup_steps": 100,
            },
        ),
        Preset(
            "Style (Flux.1-dev)",
            "1024 px, rank 16 on every attention projection, transformer only (T5 and CLIP cached), "
            "fp8 base with checkpointing, 1,500 steps at batch 1. Memory: 17.0 GiB peak on a GPU "
            "(fits 24 GB); without --fp8-base 24.8 GiB and about 15% faster (BENCHMARKS.md).",
            {**_FLOW_STYLE, "fp8_base": True},
            family="flux",
        ),
        Preset(
            "Style (SD3.5)",
            "1024 px, rank 16 on every attention projection, transformer only (text cached), "
            "checkpointing, 1,500 steps at batch 1. Memory: SD3.5 Large peaks at 17.3 GiB; "
            "--fp8-base brings it to 12.2 GiB (16 GB GPUs) and costs about 20% of the speed (BENCHMARKS.md).",
            _FLOW_STYLE,
            family="sd3",
        ),
        Preset(
            "Quick demo (embedded model)",
            "The embedded 128 px model: learns a style from ~20 images in about 3 CPU minutes.",
            _QUICK,
            family="sd1",
        ),
        Preset(
            "Quick demo, LoKr (embedded model)",
            "The embedded model's style run as a LyCORIS LoKr (factor 2, rank 16, twice the learning "
            "rates, 1,000 steps at batch 4): it passes the same style checks as the LoRA quick demo, at "
            "0.31-0.34 s a step on 2 CPU cores (BENCHMARKS.md).",
            {
                **SWEEP_BASE,
                "network": "lokr",
                "lokr_factor": 2,
                "rank": 16,
                "alpha": 16.0,
                "lr": 2e-3,
                "te_lr": 1e-3,
            },
            family="sd1",
        ),
        Preset(
            "Quick demo, DoRA (embedded model)",
            "The embedded model's style run as DoRA on LoCon (the ResNet 3x3 convs too, rank 8, 1,000 "
            "steps at batch 4): it passes the same style checks as the LoRA quick demo, at about 0.6 s "
            "a step on 2 CPU cores (BENCHMARKS.md).",
            {**SWEEP_BASE, "network": "locon", "dora": True},
            family="sd1",
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise StudioError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
