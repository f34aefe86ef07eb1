"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory written atomically (``step-000100/``): LoRA parameters
(safetensors), optimizer and LR-scheduler state, the EMA weights when the run keeps them (``torch.save``, read back with
``weights_only=True`` so nothing is unpickled beyond tensors and plain containers), the
noise generator's state, and the position in the run. A crash mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from studio.atomic import atomic_dir
from studio.errors import StudioError

_PREFIX = "step-"


@dataclass
class TrainingState:
    step: int  # optimizer steps done
    micro_step: int  # batches consumed (step * gradient accumulation)
    losses: list[float]


def trainable_state(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{component}/{name}": param.detach().float().cpu().contiguous()
        for component, model in models.items()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def save_checkpoint(
    run_dir: Path,
    state: TrainingState,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    generator: torch.Generator,
    config: dict[str, Any],
    keep: int = 3,
    ema: Any = None,
) -> Path:
    target = run_dir / "checkpoints" / f"{_PREFIX}{state.step:06d}"
    with atomic_dir(target) as tmp:
        # Serialise in memory and write with plain file writes, so a full disk is an OSError
        # (one clear line from the CLI) rather than each library's own exception type.
        (tmp / "lora.safetensors").write_bytes(save(trainable_state(models)))
        (tmp / "optimizer.pt").write_bytes(_torch_bytes(optimizer.state_dict()))
        (tmp / "scheduler.pt").write_bytes(_torch_bytes(lr_scheduler.state_dict()))
        if ema is not None:
            (tmp / "ema.pt").write_bytes(_torch_bytes(ema.state_dict()))
        (tmp / "rng.safetensors").write_bytes(save({"state": generator.get_state()}))
        (tmp / "state.json").write_text(
            json.dumps(
                {"step": state.step, "micro_step": state.micro_step, "losses": state.losses, "config": config}
            )
        )
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _torch_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def checkpoint_adapter_name(output: str | Path, step: int) -> str:
    """File name of the kohya export kept in a checkpoint: ``<name>-step000500.safetensors``."""
    return f"{Path(output).stem}-step{step:06d}.safetensors"


def checkpoint_adapters(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, kohya file)`` of every checkpoint of a run that holds one, oldest first."""
    found = []
    for checkpoint in list_checkpoints(Path(run_dir)):
        files = sorted(checkpoint.glob("*-step[0-9]*.safetensors"))
        if files:
            found.append((int(checkpoint.name.removeprefix(_PREFIX)), files[0]))
    return found


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file())


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise StudioError(
            "no checkpoint found to resume from",
            path=path,
            hint="pass a run directory (<output>-run) or one of its checkpoints/step-NNNNNN folders",
        )
    return found[-1]


def load_checkpoint(
    checkpoint: Path,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    generator: torch.Generator,
    ema: Any = None,
) -> TrainingState:
    info = json.loads((checkpoint / "state.json").read_text())
    tensors = load_file(str(checkpoint / "lora.safetensors"))
    expected = trainable_state(models)
    if {k: v.shape for k, v in tensors.items()} != {k: v.shape for k, v in expected.items()}:
        raise StudioError(
            "checkpoint does not match this run's adapter (different network, layers, rank, model or text-encoder setting)",
            path=checkpoint,
        )
    with torch.no_grad():
        for component, model in models.items():
            params = dict(model.named_parameters())
            for key, value in tensors.items():
                owner, _, name = key.partition("/")
                if owner == component:
                    params[name].copy_(value)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    generator.set_state(load_file(str(checkpoint / "rng.safetensors"))["state"])
    if ema is not None:
        if not (checkpoint / "ema.pt").is_file():
            raise StudioError(
                "this checkpoint has no EMA weights",
                path=checkpoint,
                hint="resume without --ema, or start a new run with --ema",
            )
        ema.load_state_dict(torch.load(checkpoint / "ema.pt", weights_only=True))
    return TrainingState(info["step"], info["micro_step"], list(info.get("losses", [])))
