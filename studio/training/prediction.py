"""The base as it is trained: ``--v-prediction`` and ``--zero-terminal-snr`` put into its noise
schedule, and options that mean nothing for its family refused in one line."""

from __future__ import annotations

import dataclasses
from typing import Any

from studio.config import TrainConfig
from studio.errors import StudioError
from studio.models.loader import BaseModel


def base_as_trained(config: TrainConfig, base: BaseModel) -> BaseModel:
    """The base as trained: ``--v-prediction`` / ``--zero-terminal-snr`` put into its scheduler
    (previews and the file's metadata follow); refused where the checkpoint itself says epsilon."""
    for name in base.family.unsupported_options:
        if getattr(config, name):
            raise StudioError(
                f"--{name.replace('_', '-')} does not apply to {base.family.display_name} models",
                path=config.base,
                hint=f"leave --{name.replace('_', '-')} out",
            )
    if base.family.denoiser != "unet" and (
        config.network != "lora" or config.dora or config.effective_conv_rank
    ):
        asked = " ".join(
            part
            for part, on in (
                (f"--network {config.network}", config.network != "lora"),
                ("--dora", config.dora),
                ("--conv-rank", config.conv_rank is not None or config.conv_alpha is not None),
            )
            if on
        )
        raise StudioError(
            f"{asked}: {base.family.display_name} adapters are plain LoRA on a transformer "
            "(fused layers, no ResNet convs)",
            path=config.base,
            hint="use --network lora without --dora or --conv-rank for this model",
        )
    if config.v_prediction and base.stated_prediction == "epsilon":
        raise StudioError(
            "--v-prediction, but the base checkpoint's metadata says it predicts noise (epsilon)",
            path=config.base,
            hint="drop --v-prediction, or train on the v-prediction release of the model",
        )
    if config.zero_terminal_snr and not config.v_prediction and base.prediction_type != "v_prediction":
        raise StudioError(
            "--zero-terminal-snr needs v-prediction (at zero SNR the last step's noise cannot be "
            "predicted from pure noise)",
            hint="add --v-prediction, or use a v-prediction base",
        )
    if not (config.v_prediction or config.zero_terminal_snr):
        return base
    pipeline = base.pipeline
    pipeline.scheduler = noise_schedule(config, pipeline.scheduler, sampling=True)
    return dataclasses.replace(base, prediction_type=pipeline.scheduler.config.prediction_type)


def noise_schedule(config: TrainConfig, scheduler: Any, sampling: bool = False) -> Any:
    """``scheduler`` with v-prediction and zero-terminal-SNR betas (diffusers'
    ``rescale_zero_terminal_snr``) as asked; samplers then step from the last timestep ("trailing")."""
    overrides: dict[str, Any] = {}
    if config.v_prediction:
        overrides["prediction_type"] = "v_prediction"
    if config.zero_terminal_snr:
        overrides["rescale_betas_zero_snr"] = True
        if sampling:
            overrides["timestep_spacing"] = "trailing"
    return type(scheduler).from_config(scheduler.config, **overrides) if overrides else scheduler
