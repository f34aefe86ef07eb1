"""Base-model checkpoints small enough to carry between 10-minute GPU commands.

Weights stay fp32; AdamW moments are stored in bf16 (half the bytes, same exponent range)
and everything is split into safetensors shards under 15 MB so each one can travel back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHARD_BYTES = 15 * 1000**2


def _save_sharded(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    shard: dict[str, torch.Tensor] = {}
    size, index = 0, 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            save_file(shard, str(directory / f"shard-{index:02d}.safetensors"))
            shard, size, index = {}, 0, index + 1
        shard[name] = tensor
        size += nbytes
    if shard:
        save_file(shard, str(directory / f"shard-{index:02d}.safetensors"))


def save(
    directory: Path,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None,
    state: dict,
) -> None:
    """``models`` keyed by component name; the VAE is stored fp16 (it is frozen once trained)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("shard-*.safetensors"):
        old.unlink()
    tensors = {}
    for component, model in models.items():
        dtype = torch.float16 if component == "vae" else torch.float32
        for name, value in model.state_dict().items():
            tensors[f"{component}/{name}"] = value.to(dtype)
    steps = {}
    if optimizer is not None:
        for i, per_param in optimizer.state_dict()["state"].items():
            tensors[f"adam/{i}/m"] = per_param["exp_avg"].to(torch.bfloat16)
            tensors[f"adam/{i}/v"] = per_param["exp_avg_sq"].to(torch.bfloat16)
            steps[str(i)] = float(per_param["step"])
    _save_sharded(tensors, directory)
    (directory / "state.json").write_text(json.dumps({**state, "adam_steps": steps}, indent=1))


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("shard-*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def load_state(directory: Path) -> dict:
    path = directory / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def restore_model(model: torch.nn.Module, tensors: dict[str, torch.Tensor], component: str) -> bool:
    prefix = f"{component}/"
    found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not found:
        return False
    model.load_state_dict({k: v.float() for k, v in found.items()})
    return True


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], steps: dict
) -> None:
    state_dict = optimizer.state_dict()
    for i in range(sum(len(g["params"]) for g in state_dict["param_groups"])):
        if f"adam/{i}/m" in tensors:
            state_dict["state"][i] = {
                "step": torch.tensor(steps[str(i)]),
                "exp_avg": tensors[f"adam/{i}/m"].float(),
                "exp_avg_sq": tensors[f"adam/{i}/v"].float(),
            }
    optimizer.load_state_dict(state_dict)
