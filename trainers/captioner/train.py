"""Train the embedded default captioner on toyworld renders (CPU, a few minutes).

    python -m trainers.captioner.train --out assets/default-captioner

Scenes come from ``scene_at(TRAIN_SEED, i)``: the whole grammar (one to three objects, plain and
gradient backgrounds). The measurement (tests/test_captioner_default.py) uses other seeds, so
every scene it captions is fresh. Labels are read from the scene, not from its caption text.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from studio.captioning.default import WEIGHTS, ToyCaptionNet, Vocabulary, prepare
from trainers.toyworld import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, SIZES, render_scene, scene_at
from trainers.toyworld.scene import _PHRASE

TRAIN_SEED = 7
IGNORE = -100


def vocabulary() -> Vocabulary:
    positions = {name: (x, y, _PHRASE[name]) for name, (x, y) in POSITIONS.items()}
    return Vocabulary(list(SHAPES), list(COLOURS), list(SIZES), positions, IMAGE_SIZE // 2, 24)


def labels(scenes: list, vocab: Vocabulary) -> dict[str, torch.Tensor]:
    """Per anchor: shape (0 = empty), colour and size (IGNORE where empty); per scene: background."""
    n_pos = len(vocab.positions)
    shape = torch.zeros(len(scenes), n_pos, dtype=torch.long)
    colour = torch.full((len(scenes), n_pos), IGNORE)
    size = torch.full((len(scenes), n_pos), IGNORE)
    index = {name: i for i, name in enumerate(vocab.positions)}
    for s, scene in enumerate(scenes):
        for obj in scene.objects:
            p = index[obj.position]
            shape[s, p] = vocab.shapes.index(obj.shape) + 1
            colour[s, p] = vocab.colours.index(obj.colour)
            size[s, p] = vocab.sizes.index(obj.size)
    top = torch.tensor([vocab.colours.index(sc.background.top) for sc in scenes])
    bottom = torch.tensor(
        [
            0 if sc.background.bottom is None else vocab.colours.index(sc.background.bottom) + 1
            for sc in scenes
        ]
    )
    return {
        "shape": shape.flatten(),
        "colour": colour.flatten(),
        "size": size.flatten(),
        "top": top,
        "bottom": bottom,
    }


def _prepared(span: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    images = [Image.fromarray(render_scene(scene_at(TRAIN_SEED, i))) for i in range(*span)]
    crops, corners = prepare(images, vocabulary())
    return crops.half(), corners


def dataset(count: int, vocab: Vocabulary, workers: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Crops, corner colours and labels of scenes ``0 .. count-1``, rendered on ``workers`` processes."""
    spans = [(start, min(start + 500, count)) for start in range(0, count, 500)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_prepared, spans)
    scenes = [scene_at(TRAIN_SEED, i) for i in range(count)]
    crops = torch.cat([c for c, _ in parts])
    corners = torch.cat([k for _, k in parts])
    return crops, corners, labels(scenes, vocab)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    vocab = vocabulary()
    started = time.time()
    crops, corners, y = dataset(args.scenes, vocab, args.workers)
    render_s = time.time() - started
    device = torch.device(args.device)
    crops, corners = crops.to(device), corners.to(device)
    y = {k: v.to(device) for k, v in y.items()}
    model = ToyCaptionNet(vocab).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(crops) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=args.lr, total_steps=steps)
    ce = nn.CrossEntropyLoss(ignore_index=IGNORE)
    log, step = [], 0
    generator = torch.Generator().manual_seed(args.seed)
    for _epoch in range(args.epochs):
        order = torch.randperm(len(crops), generator=generator).to(device)
        for start in range(0, len(order) - args.batch + 1, args.batch):
            idx = order[start : start + args.batch]
            scene_idx = torch.randint(0, len(corners), (args.batch,), generator=generator).to(device)
            shape, colour, size = model.forward_objects(crops[idx].float())
            top, bottom = model.forward_background(corners[scene_idx])
            loss = (
                ce(shape, y["shape"][idx])
                + ce(colour, y["colour"][idx])
                + ce(size, y["size"][idx])
                + ce(top, y["top"][scene_idx])
                + ce(bottom, y["bottom"][scene_idx])
            )
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            step += 1
            if step % args.log_every == 0 or step == steps:
                log.append((step, round(loss.item(), 4), round(time.time() - started, 1)))
                print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - started:.0f}s", flush=True)
    model.cpu().eval()
    return {
        "model": model,
        "vocab": vocab,
        "log": log,
        "steps": step,
        "render_s": render_s,
        "total_s": time.time() - started,
    }


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in result["model"].state_dict().items()
    }
    save_file(state, str(out / WEIGHTS))
    (out / "config.json").write_text(json.dumps(result["vocab"].to_json(), indent=1) + "\n")
    (out / "train_log.json").write_text(
        json.dumps({k: result[k] for k in ("args", "log", "steps", "render_s", "total_s")})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = train(args)
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    save(result, args.out)
    from studio.captioning.default import DefaultCaptioner
    from trainers.captioner.evaluate import measure

    scores = measure(DefaultCaptioner(args.out).caption, 1000, seed=1234)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
