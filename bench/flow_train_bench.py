"""Flow-matching LoRA training (issue 14 item 7): diffusers' Flux/SD3 LoRA example loop against ours.

Bases are full size with random weights (``studio.models.flow_configs``): Flux.1-dev or SD3.5
Large, built on the GPU, then handed over as a user's base would be after loading, on the CPU.
Every row trains rank-16 LoRA on the ``attn`` layer set (the same modules for both), batch 1,
text encoders frozen, bf16:

* ``ref``: the loop of diffusers' ``train_dreambooth_lora_flux.py`` / ``..._sd3.py`` with its
  memory switches on: the transformer in bf16 on the GPU, gradient checkpointing, text
  embeddings and latents pre-computed (T5 and the VAE leave the GPU), AdamW, the loss read
  every step.
* ``ours``: ``studio.training.recipe.train`` with ``low_memory`` (checkpointing, cached text,
  text encoders and VAE parked on the CPU) plus a row's switches (``fp8_base``).

Two peaks per row: ``peak_gib`` over the whole row (moving the base in, caching, warm-up and
training) and ``train_peak_gib`` over the timed steps only.

    python bench/flow_train_bench.py --model flux1-dev --rows ref:512,ours:512,ours+fp8_base:512
    python bench/flow_train_bench.py --model tiny-flux --device cpu --rows ref:64,ours:64   # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import build_flow_pipeline, parse_row_specs, peak_gib, reset_peak
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model
from train_bench import load_images, write_dataset

from studio.config import TrainConfig
from studio.families import DenoiserInput, get_family
from studio.lora.targets import all_targets
from studio.models.flow_configs import FLOW_FULL_SIZE
from studio.models.loader import BaseModel
from studio.training.encoding import encode_latents
from studio.training.recipe import StepEvent, train

RANK = 16


@dataclass
class Row:
    kind: str
    resolution: int
    switches: tuple[str, ...]

    @property
    def label(self) -> str:
        return "+".join((self.kind, *self.switches)) + f" {self.resolution}px"


def parse_rows(text: str) -> list[Row]:
    return [Row(*spec) for spec in parse_row_specs(text)]


def build_base(model: str, device: str) -> BaseModel:
    """A full-size flow pipeline with random weights, drawn on ``device`` and left on the CPU."""
    if model.startswith("tiny-"):
        family = get_family(model.removeprefix("tiny-"))
        return BaseModel(family.build_tiny(), family, "flow", model)
    pipe = build_flow_pipeline(model, device, torch.bfloat16 if device == "cuda" else torch.float32)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.to("cpu")
    return BaseModel(pipe, get_family(FLOW_FULL_SIZE[model].family), "flow", model)


def reference_loop(base: BaseModel, images: torch.Tensor, captions: list[str], row: Row, args) -> list[float]:
    """diffusers' example: bf16 transformer with checkpointing, embeddings and latents pre-computed."""
    device, family, components = torch.device(args.device), base.family, base.components
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    with torch.no_grad():
        frozen = ["vae", *family.text_encoder_names, *family.frozen_encoders]
        for name in frozen:
            components[name].to(device, torch.float32 if name == "vae" else dtype)
        texts = [family.encode_text(components, [c], device) for c in captions]
        vae = components["vae"]
        latents = [encode_latents(vae, images[i : i + 1]) for i in range(len(images))]
        for name in frozen:
            components[name].to("cpu")
    transformer = components["transformer"].requires_grad_(False).to(device, dtype)
    targets = all_targets(components, family, "attn", False)["transformer"]
    inject_adapter_in_model(
        LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets), transformer
    )
    cast_training_params(transformer, dtype=torch.float32)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = family.training_scheduler(base.pipeline)
    generator = torch.Generator().manual_seed(0)
    stamps = []
    for step in range(args.warmup + args.steps):
        i = step % len(latents)
        x = latents[i].to(dtype)
        noise = torch.randn_like(x)
        t = family.sample_timesteps(scheduler, 1, generator).to(device)
        noisy = family.noisy_latents(scheduler, x, noise, t)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            size = (row.resolution, row.resolution)
            batch = DenoiserInput(noisy, t, texts[i], [size], [(0, 0)], size, scheduler)
            prediction = family.predict(transformer, batch, dtype)
        loss = F.mse_loss(prediction.float(), (noise - x).float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
        if step == args.warmup - 1:
            args.setup_peak = peak_gib(args.device)
            reset_peak(args.device)
    return stamps


def ours(base: BaseModel, data: Path, out: Path, row: Row, args) -> list[float]:
    config = TrainConfig(
        data=str(data),
        output=str(out / "adapter.safetensors"),
        layers="attn",
        rank=RANK,
        alpha=float(RANK),
        train_text_encoder=False,
        resolution=row.resolution,
        batch_size=1,
        steps=args.warmup + args.steps,
        lr=1e-4,
        low_memory=True,
        mixed_precision="bf16" if args.device == "cuda" else "no",
        **{switch: True for switch in row.switches},
    )
    stamps: list[float] = []

    def on_step(event: StepEvent) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == args.warmup:
            args.setup_peak = peak_gib(args.device)
            reset_peak(args.device)

    train(config, on_step=on_step, base=base)
    return stamps


def measure(row: Row, args, base: BaseModel, data: Path) -> dict[str, Any]:
    images, captions = load_images(data, row.resolution)
    reset_peak(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if row.kind == "ref":
            stamps = reference_loop(base, images, captions, row, args)
        else:
            stamps = ours(base, data, Path(tmp), row, args)
    wall = time.perf_counter() - started
    train_peak = peak_gib(args.device)
    timed = stamps[args.warmup :]
    seconds = timed[-1] - stamps[args.warmup - 1]
    return {
        "row": row.label,
        "img_s": len(timed) / seconds,
        "step_ms": 1000 * seconds / len(timed),
        "train_peak_gib": train_peak,
        "peak_gib": max(filter(None, (args.setup_peak, train_peak)), default=None),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="flux1-dev", help="flux1-dev, flux1-schnell, sd35-large, sd35-medium, tiny-flux"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="ref:512,ours:512,ours+fp8_base:512")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.setup_peak = None
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; model {args.model}", flush=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(False)  # its backward fails here, as the trainer says
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in parse_rows(args.rows):
            data = write_dataset(Path(tmp) / f"data{row.resolution}", args.images, row.resolution)
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            base = build_base(args.model, args.device)  # fresh: LoRA and fp8 change the base
            result = measure(row, args, base, data)
            del base
            results.append(result)
            print(json.dumps(result), flush=True)
    reference = {r["row"].split()[-1]: r for r in results if r["row"].startswith("ref ")}
    print(f"\n{'row':<28} {'img/s':>7} {'step ms':>8} {'train GiB':>10} {'vs ref':>7}")
    for r in results:
        ref = reference.get(r["row"].split()[-1])
        ratio = f"{r['img_s'] / ref['img_s']:6.2f}x" if ref else "-"
        peak = f"{r['train_peak_gib']:.1f}" if r["train_peak_gib"] is not None else "-"
        print(f"{r['row']:<28} {r['img_s']:7.3f} {r['step_ms']:8.1f} {peak:>10} {ratio:>7}")
    if args.json:
        args.json.write_text(json.dumps({"meta": vars(args) | {"json": str(args.json)}, "rows": results}))


if __name__ == "__main__":
    main()
