"""Load a base model from a diffusers folder, a single-file checkpoint or a hub id.

Every way in ends in the same ``BaseModel``: a diffusers pipeline plus the detected
family, so nothing downstream cares where the weights came from. Offline failures
become one ``StudioError`` that says what to pass instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.errors import StudioError
from studio.families import Family, detect_family, family_for_checkpoint
from studio.formats.safetensors_io import PICKLE_SUFFIXES, read_header, refuse_pickle
from studio.models.default import default_model_dir
from studio.models.family import prediction_type, stated_prediction

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class BaseModel:
    pipeline: Any  # the family's pipeline class (StableDiffusionPipeline, StableDiffusionXLPipeline...)
    family: Family
    prediction_type: str  # "epsilon" or "v_prediction"
    source: str  # what the user passed: "default", a path or a hub id
    stated_prediction: str | None = None  # what a single file's own keys or metadata say, if anything

    @property
    def components(self) -> dict[str, Any]:
        return self.pipeline.components

    @property
    def name(self) -> str:
        return Path(self.source).stem if os.path.exists(self.source) else self.source


def _finish(pipeline: Any, source: str) -> BaseModel:
    pipeline.set_progress_bar_config(disable=True)
    return BaseModel(
        pipeline, detect_family(pipeline.components), prediction_type(pipeline.scheduler.config), source
    )


def _load_folder(path: Path, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise StudioError(
            "not a diffusers model folder (no model_index.json)",
            path=path,
            hint="pass the folder that holds model_index.json, unet/, vae/ and text_encoder/",
        )
    try:
        return DiffusionPipeline.from_pretrained(
            str(path),
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,  # never fall back to pickled .bin weights
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        raise StudioError(
            f"could not load the diffusers folder ({exc})".replace("\n", " ")[:500],
            path=path,
            hint="the studio reads only .safetensors weights; convert .bin weights with a tool you trust",
        ) from None


def _load_single_file(path: Path, dtype: torch.dtype, config: str | None) -> Any:
    header = read_header(path)
    family = family_for_checkpoint(set(header.tensors))
    pipeline = _convert_single_file(path, family, dtype, config)
    stated, ztsnr = stated_prediction(header.tensors, header.metadata)
    if stated == "v_prediction":  # the file says so; the borrowed config may not (NoobAI v-pred)
        overrides = {"prediction_type": "v_prediction"}
        if ztsnr:
            overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, **overrides)
    return pipeline, stated


def _convert_single_file(path: Path, family: Any, dtype: torch.dtype, config: str | None) -> Any:
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config:
        kwargs["config"] = config
    if os.environ.get("HF_HUB_OFFLINE") == "1" or config:
        kwargs["local_files_only"] = True
    try:
        return family.load_single_file(path, **kwargs)
    except StudioError:  # the family's own, already one line
        raise
    except Exception as exc:  # diffusers raises many types here; all mean "could not resolve or convert"
        raise StudioError(
            f"could not load this {family.value} single-file checkpoint ({type(exc).__name__}: {exc})".replace(
                "\n", " "
            )[:400],
            path=path,
            hint="offline, pass --base-config (Python: config=) with a local diffusers folder of the same architecture "
            "(e.g. a saved SD 1.5 or SDXL pipeline), or pass that diffusers folder as --base",
        ) from None


def _load_hub(repo_id: str, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(
            repo_id, dtype=dtype, use_safetensors=True, safety_checker=None
        )
    except Exception as exc:  # offline, not cached, gated, or not a pipeline repo
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "offline and not in the local cache" if offline else f"{type(exc).__name__}: {exc}"
        raise StudioError(
            f"could not load hub model {repo_id!r} ({reason})".replace("\n", " ")[:400],
            hint="pass a local diffusers folder or a .safetensors checkpoint, or 'default' for the embedded model",
        ) from None


def load_base(
    spec: str | os.PathLike = "default", *, dtype: torch.dtype = torch.float32, config: str | None = None
):
    """Load ``spec``: ``"default"``, a diffusers folder, a ``.safetensors`` file, or a hub id.

    ``config`` is a diffusers folder (or hub id) whose configs describe a single-file
    checkpoint; offline it is the only way diffusers can convert one.
    """
    source = str(spec)
    if source == "default":
        return _finish(_load_folder(default_model_dir(), dtype), "default")
    path = Path(source).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        refuse_pickle(path)
    if path.is_dir():
        return _finish(_load_folder(path, dtype), source)
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise StudioError(
                "unsupported model file type",
                path=path,
                hint="use a .safetensors checkpoint or a diffusers folder",
            )
        pipeline, stated = _load_single_file(path, dtype, config)
        return dataclasses.replace(_finish(pipeline, source), stated_prediction=stated)
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return _finish(_load_hub(source, dtype), source)
    raise StudioError(
        "no such model file or folder",
        path=path,
        hint="pass a diffusers folder, a .safetensors file, a hub id, or 'default'",
    )
