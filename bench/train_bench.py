"""Training throughput: a plain diffusers + peft loop against the studio's trainer, in one process.

Issue 6. Every row trains LoRA rank 16 on the UNet's ``to_q/k/v/out.0`` with the text encoder
frozen, on a fresh base (a full-size SD 1.5 / SDXL with random weights, see common.py; or the
embedded / tiny model on a CPU):

* ``ref``: the reference loop of diffusers' LoRA example: the frozen base in bf16, LoRA in
  fp32, autocast, the VAE encodes and the text encoder runs every step, AdamW unfused, the
  loss read every step. Pixels are already on the device (the reference pays no data loading).
* ``ours``: ``studio.training.recipe.train`` itself on a folder of images, with a row's switches
  (``compile``, ``channels_last``, ``low_memory``...). It caches latents and text, so the
  VAE and text encoder never run in the loop.

Throughput is timed over the last ``--steps`` steps after ``--warmup`` steps (compiling happens
there); peak memory over the whole row. MFU counts the issue's model FLOPs per image (forward
plus activation gradients) against the GPU's dense bf16 peak.

    python bench/train_bench.py --model sd15 --rows ref:4,ours:4,ours+compile:4,ours+compile:32
    python bench/train_bench.py --model sdxl --rows ref:4,ours+compile:4,ours+low_memory:1
    python bench/train_bench.py --model default --rows ref:8,ours:8 --device cpu   # CPU figures
    python bench/train_bench.py --model sd15 --e2e 1000        # 20 images, batch 4, wall time
    python bench/train_bench.py --model sd15 --rows ours:32 --profile   # kernel time by category

Row syntax: ``KIND[+switch...]:BATCH`` where switches are TrainConfig booleans
(``compile``, ``channels_last``, ``low_memory``, ``gradient_checkpointing``, ``no_overlap``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import build_pipeline, parse_row_specs, peak_gib, reset_peak
from diffusers import DDPMScheduler
from diffusers.training_utils import cast_training_params
from kernel_profile import KernelProfile
from peft import LoraConfig
from PIL import Image

from studio.config import TrainConfig
from studio.models.family import ModelFamily, detect_family
from studio.models.loader import BaseModel, load_base
from studio.training import data_parallel
from studio.training.encoding import encode_text, sdxl_time_ids
from studio.training.recipe import StepEvent, train

# Forward + activation-gradient FLOPs per image at the native size (issue 6), and dense bf16 peaks.
TFLOP_PER_IMAGE = {"sd15": (1.73, 512), "sdxl": (14.2, 1024)}
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}
RANK, TARGETS = 16, ["to_q", "to_k", "to_v", "to_out.0"]
PROFILED = 5  # steps in a --profile window


@dataclass
class Row:
    kind: str
    batch: int
    switches: tuple[str, ...]

    @property
    def label(self) -> str:
        return "+".join((self.kind, *self.switches)) + f" bs{self.batch}"


def parse_rows(text: str) -> list[Row]:
    return [Row(*spec) for spec in parse_row_specs(text)]


def fresh_base(model: str, device: str) -> BaseModel:
    if model == "default":
        base = load_base("default")
    else:
        pipe = build_pipeline(model, device, torch.bfloat16 if device == "cuda" else torch.float32)
        base = BaseModel(pipe, detect_family(pipe.components), "epsilon", model)
    base.pipeline.set_progress_bar_config(disable=True)
    return base


def write_dataset(directory: Path, count: int, size: int, seed: int = 0) -> Path:
    """Smooth random images (noise is not what a VAE sees) with short captions."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(directory / f"{i:03d}.png")
        (directory / f"{i:03d}.txt").write_text(f"a picture number {i} in a bold style")
    return directory


def flops_per_image(model: str, resolution: int) -> float | None:
    if model not in TFLOP_PER_IMAGE:
        return None
    tflop, native = TFLOP_PER_IMAGE[model]
    return tflop * (resolution / native) ** 2


def reference_loop(base: BaseModel, images: torch.Tensor, captions: list[str], row: Row, args) -> list[float]:
    """The plain loop; returns the wall time at the end of every step."""
    device, family, components = args.device, base.family, base.components
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    te_names = family.text_encoder_names
    for name in ("vae", "unet", *te_names):
        components[name].requires_grad_(False).to(device, dtype)
    unet = components["unet"]
    unet.add_adapter(
        LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS)
    )
    cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    vae = components["vae"]
    unet.train()
    rng = np.random.default_rng(0)
    stamps = []
    for _ in range(args.warmup + args.steps):
        pick = rng.choice(len(images), row.batch, replace=len(images) < row.batch)
        pixels = images[pick].to(device, dtype)
        batch_captions = [captions[i] for i in pick]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                hidden, pooled = encode_text(components, family, batch_captions, torch.device(device))
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, 1000, (row.batch,), device=device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            added = None
            if family is ModelFamily.SDXL:
                size = (pixels.shape[-2], pixels.shape[-1])
                time_ids = sdxl_time_ids([size] * row.batch, [(0, 0)] * row.batch, size, torch.device(device))
                added = {"text_embeds": pooled, "time_ids": time_ids}
            prediction = unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
            loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
    return stamps


def ours(
    base: BaseModel, data: Path, out: Path, row: Row, args, steps: int | None = None, profile=None
) -> list[float]:
    switches = {s.removeprefix("no_"): not s.startswith("no_") for s in row.switches}
    if "overlap" in switches:
        switches["overlap_steps"] = switches.pop("overlap")
    config = TrainConfig(
        data=str(data),
        output=str(out / "adapter.safetensors"),
        layers="attn",
        rank=RANK,
        alpha=float(RANK),
        train_text_encoder=False,
        resolution=args.resolution,
        batch_size=row.batch,
        steps=steps or args.warmup + args.steps,
        lr=1e-4,
        mixed_precision="bf16" if args.device == "cuda" else "no",
        **switches,
    )
    stamps: list[float] = []

    def on_step(event: StepEvent) -> None:
        stamps.append(time.perf_counter())
        if profile is not None:
            profile.on_step(event)

    train(config, on_step=on_step, base=base)
    return stamps


def measure(row: Row, args, data: Path, images: torch.Tensor, captions: list[str]) -> dict[str, Any]:
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    base = fresh_base(args.model, args.device)
    reset_peak(args.device)
    started = time.perf_counter()
    profile = KernelProfile(args.warmup + args.steps - PROFILED, PROFILED) if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        if row.kind == "ref":
            stamps = reference_loop(base, images, captions, row, args)
        else:
            stamps = ours(base, data, Path(tmp), row, args, profile=profile)
    wall = time.perf_counter() - started
    timed = stamps[args.warmup :]
    seconds = timed[-1] - stamps[args.warmup - 1]
    img_s = row.batch * len(timed) / seconds
    flops = flops_per_image(args.model, args.resolution)
    result = {
        "row": row.label,
        "img_s": img_s,
        "step_ms": 1000 * seconds / len(timed),
        "peak_gib": peak_gib(args.device),
        "first_step_s": stamps[0] - started,
        "wall_s": wall,
    }
    if flops and args.device == "cuda":
        result["mfu"] = img_s * flops / args.peak_tflops
    if profile is not None and profile.ms:
        result["profile"] = profile.summary()
    del base
    return result


def load_images(data: Path, size: int) -> tuple[torch.Tensor, list[str]]:
    paths = sorted(data.glob("*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 127.5 - 1 for p in paths]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, [p.with_suffix(".txt").read_text() for p in paths]


def print_profiles(results: list[dict[str, Any]]) -> None:
    """Kernel time by category, ms per step and share of the step (the last PROFILED steps)."""
    for r in results:
        if "profile" in r:
            p = r["profile"]
            print(f"\nkernel time, {r['row']}: {p['ms_per_step']:.1f} ms a step")
            for name, ms in p["by_category_ms"].items():
                print(f"  {name:<22} {ms:8.2f} ms  {p['by_category_pct'][name]:5.1f}%")
            for name, ms in p["largest_kernels_ms"]:
                print(f"    {ms:7.2f} ms  {name}")


def print_table(results: list[dict[str, Any]]) -> None:
    reference = next((r for r in results if r["row"].startswith("ref")), None)
    print(f"\n{'row':<34} {'img/s':>8} {'step ms':>8} {'peak GiB':>9} {'MFU':>6} {'vs ref':>7}")
    for r in results:
        ratio = r["img_s"] / reference["img_s"] if reference else math.nan
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['row']:<34} {r['img_s']:8.2f} {r['step_ms']:8.1f} {peak:>9} {mfu:>6} {ratio:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="sd15", help="sd15, sdxl, sd21 (random full size), default, tiny-sd1"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, help="default: the model's native size")
    parser.add_argument("--rows", default="ref:4,ours:4,ours+compile:4")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument(
        "--e2e", type=int, metavar="STEPS", help="also time a whole run: caching, STEPS, export"
    )
    parser.add_argument("--e2e-switches", default="compile", help="'+'-separated switches for the e2e run")
    parser.add_argument(
        "--force-allreduce",
        action="store_true",
        help="under a one-process torchrun, all-reduce the gradients anyway (timing only: they are halved)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="kernel time by category over each ours row's last steps"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.force_allreduce:  # the cost of a multi-GPU step's all-reduce, short of the wire
        data_parallel.world_size = lambda: 2
    natives = {"sd15": 512, "sd21": 768, "sdxl": 1024, "default": 128}
    args.resolution = args.resolution or natives.get(args.model, 64)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), 790.0)
    print(f"device {name}; torch {torch.__version__}; model {args.model} at {args.resolution}px", flush=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    results = []
    rows = parse_rows(args.rows)
    # Enough images for the largest batch: a batch never holds more than the dataset (20 images
    # made every "batch 32" row of 2026-11-24 a batch of 20).
    args.images = max([args.images, *(row.batch for row in rows)])
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp) / "data", args.images, args.resolution)
        images, captions = load_images(data, args.resolution)
        for row in rows:
            result = measure(row, args, data, images, captions)
            results.append(result)
            print(json.dumps(result), flush=True)
        if args.e2e:
            base = fresh_base(args.model, args.device)
            row = Row("ours", 4, tuple(s for s in args.e2e_switches.split("+") if s))
            started = time.perf_counter()
            ours(base, data, Path(tmp), row, args, steps=args.e2e)
            e2e = {"row": f"e2e {row.label} {args.e2e} steps", "wall_s": time.perf_counter() - started}
            print(json.dumps(e2e), flush=True)
    print_table(results)
    print_profiles(results)
    if args.e2e:
        print(f"\nend to end: {args.e2e} steps, batch 4, {args.images} images: {e2e['wall_s']:.1f} s wall")
    if args.json:
        args.json.write_text(json.dumps({"meta": vars(args) | {"json": str(args.json)}, "rows": results}))


if __name__ == "__main__":
    main()
