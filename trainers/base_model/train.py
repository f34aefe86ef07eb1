"""Train the embedded base model, in slices that fit 10-minute GPU commands.

    python -m trainers.base_model.train --checkpoint ckpt --out OUT --minutes 8.5

Each call resumes from ``--checkpoint`` (if it holds one), trains the VAE first when none
is there yet, then trains UNet + text encoder until ``--total-steps`` or the time budget,
and writes the new checkpoint, a loss log and a sample grid to ``--out``. The data stream,
noise and timesteps depend only on the seed and the step, so the run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from studio.training.loss import diffusion_loss, sample_noise, sample_timesteps
from trainers.base_model import architecture, checkpoint
from trainers.base_model.data import CaptionedScenes, StepBatches, VaeImages
from trainers.toyworld import held_out_scenes


@dataclass
class Settings:
    checkpoint: Path
    out: Path
    minutes: float = 8.5
    seed: int = 0
    vae_minutes: float = 2.5
    vae_batch: int = 64
    vae_lr: float = 5e-4
    batch: int = 256
    lr: float = 3e-4
    te_lr: float = 3e-4
    warmup: int = 300
    total_steps: int = 1_000_000
    decay_from: int | None = None  # warmup-stable-decay: linear decay to 5% from here to total_steps
    noise_offset: float = 0.1
    min_snr_gamma: float = 5.0
    workers: int = 14
    log_every: int = 100


def lr_factor(step: int, s: Settings) -> float:
    if step < s.warmup:
        return (step + 1) / s.warmup
    if s.decay_from is None or step < s.decay_from:
        return 1.0
    span = max(1, s.total_steps - s.decay_from)
    return max(0.05, 1.0 - (step - s.decay_from) / span)


def _loader(dataset, batch: int, first_step: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=StepBatches(batch, first_step),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def train_vae(vae, s: Settings, device, deadline: float) -> dict:
    """Reconstruction (L1) + a tiny KL term, until the VAE's slice of time is used."""
    torch.manual_seed(s.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    vae.train()
    losses, step, started = [], 0, time.time()
    bar = tqdm(desc="vae", unit="step")
    for images in _loader(VaeImages(s.seed), s.vae_batch, 0, s.workers):
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(images).latent_dist
            recon = vae.decode(posterior.sample()).sample
        l1 = (recon.float() - images).abs().mean()
        kl = posterior.kl().mean() / images[0].numel()
        loss = l1 + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = s.vae_lr * min(1.0, (step + 1) / 200) * (0.2 if time.time() > deadline - 30 else 1)
        optimizer.step()
        step += 1
        losses.append(l1.item())
        bar.update(1)
        if step % s.log_every == 0:
            bar.set_postfix(l1=f"{np.mean(losses[-s.log_every :]):.4f}")
        if time.time() > deadline:
            break
    bar.close()
    vae.eval()
    # Round to fp16 now, so the UNet trains on exactly the latents the shipped VAE makes.
    vae.to(torch.float16).to(torch.float32)
    with torch.no_grad():
        batch = next(iter(_loader(VaeImages(s.seed + 1), 512, 0, s.workers))).to(device)
        latents = vae.encode(batch).latent_dist.mode()
    scale = float(1.0 / latents.float().std())
    vae.register_to_config(scaling_factor=scale)
    curve = [
        (i + s.log_every, float(np.mean(losses[i : i + s.log_every]))) for i in range(0, step, s.log_every)
    ]
    return {
        "steps": step,
        "batch": s.vae_batch,
        "seconds": round(time.time() - started, 1),
        "scaling_factor": scale,
        "final_l1": float(np.mean(losses[-100:])),
        "curve": curve,
    }


@torch.no_grad()
def sample_grid(vae, unet, text_encoder, tokenizer, device, path: Path, count: int = 16) -> None:
    pipeline = architecture.make_pipeline(vae, unet, text_encoder, tokenizer).to(device)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    prompts = [scene.caption for scene in held_out_scenes(count)]
    generator = torch.Generator(device).manual_seed(0)
    images = pipeline(
        prompts, num_inference_steps=20, guidance_scale=5.0, generator=generator, output_type="np"
    ).images
    rows = [np.concatenate(list(images[r * 4 : r * 4 + 4]), axis=1) for r in range(count // 4)]
    Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)).save(path)


def main(s: Settings) -> None:
    started = time.time()
    deadline = started + s.minutes * 60
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    s.out.mkdir(parents=True, exist_ok=True)

    tokenizer = architecture.make_tokenizer()
    torch.manual_seed(s.seed)
    vae, unet = architecture.make_vae(), architecture.make_unet()
    text_encoder = architecture.make_text_encoder(tokenizer)
    tensors = checkpoint.load_tensors(s.checkpoint) if s.checkpoint.is_dir() else {}
    state = checkpoint.load_state(s.checkpoint) if s.checkpoint.is_dir() else {}
    state.setdefault("calls", [])
    vae.to(device)

    call = {"settings": {k: str(v) for k, v in asdict(s).items()}, "start_step": state.get("step", 0)}
    if checkpoint.restore_model(vae, tensors, "vae"):
        vae.register_to_config(scaling_factor=state["vae"]["scaling_factor"])
    else:
        state["vae"] = train_vae(vae, s, device, started + s.vae_minutes * 60)
        print("vae:", {k: v for k, v in state["vae"].items() if k != "curve"}, flush=True)
    vae.requires_grad_(False).eval()

    checkpoint.restore_model(unet, tensors, "unet")
    checkpoint.restore_model(text_encoder, tensors, "text_encoder")
    unet.to(device).train()
    text_encoder.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": s.lr},
            {"params": list(text_encoder.parameters()), "lr": s.te_lr},
        ],
        weight_decay=0.01,
    )
    checkpoint.restore_optimizer(optimizer, tensors, state.get("adam_steps", {}))
    noise_scheduler = DDPMScheduler.from_config(architecture.SCHEDULER)
    step = state.get("step", 0)
    losses: list[float] = []
    curve = state.setdefault("curve", [])
    bar = tqdm(desc="unet+te", initial=step, total=s.total_steps, unit="step")
    loader = _loader(CaptionedScenes(s.seed, tokenizer), s.batch, step, s.workers)
    tick = time.time()
    for images, ids in loader:
        if step >= s.total_steps or time.time() > deadline:
            break
        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        images = images.to(device, non_blocking=True).float() / 127.5 - 1
        ids = ids.to(device, non_blocking=True)
        for group, base in zip(optimizer.param_groups, (s.lr, s.te_lr)):
            group["lr"] = base * lr_factor(step, s)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.mode().float() * vae.config.scaling_factor
            noise = sample_noise(latents.shape, generator, s.noise_offset).to(device, latents.dtype)
            timesteps = sample_timesteps(len(latents), 1000, generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, hidden).sample
        loss = diffusion_loss(prediction, noise, timesteps, noise_scheduler, s.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % s.log_every == 0:
            mean = float(np.mean(losses[-s.log_every :]))
            curve.append((step, mean))
            rate = s.log_every / (time.time() - tick)
            tick = time.time()
            bar.set_postfix(loss=f"{mean:.4f}", it_s=f"{rate:.1f}")
            print(json.dumps({"step": step, "loss": round(mean, 5), "it_s": round(rate, 2)}), flush=True)
    bar.close()

    state["step"] = step
    call.update(end_step=step, seconds=round(time.time() - started, 1), batch=s.batch)
    state["calls"].append(call)
    checkpoint.save(
        s.out / "ckpt", {"vae": vae, "unet": unet, "text_encoder": text_encoder}, optimizer, state
    )
    unet.eval()
    text_encoder.eval()
    sample_grid(vae, unet, text_encoder, tokenizer, device, s.out / f"samples-{step:06d}.png")
    print(json.dumps({"done": step, "seconds": round(time.time() - started, 1)}), flush=True)


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(Settings(Path("."), Path("."))).items():
        kind = (
            Path
            if isinstance(value, Path)
            else int
            if isinstance(value, int) or name == "decay_from"
            else float
        )
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=value, required=name in ("checkpoint", "out"))
    return Settings(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse())
