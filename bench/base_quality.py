"""Quality of the embedded base model, measured with the toyworld's ground truth.

    python bench/base_quality.py [--model assets/default-model] [--prompts 240] [--out out/base_quality]

Generates one image per held-out prompt (single object, plain background; captions the
model never trained on) at 20 steps and CFG 5, reads each back (background colour,
object colour, object mask) and judges the shape with a classifier trained on clean
renders. Prints a JSON summary; ``--out`` also keeps a contact sheet of the first images.

    python bench/base_quality.py --figure docs/blend.png --adapters A.safetensors B.safetensors

instead draws the README figure: base | style A | style B | 50/50 blend, one prompt and seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from studio.generate import GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.models.loader import load_base
from studio.recipes import GenerationSettings
from trainers.toyworld import held_out_scenes
from trainers.toyworld.analysis import read_single
from trainers.toyworld.shape_classifier import train_shape_classifier


def blend_figure(model: str, adapters: list[Path], path: Path, prompt: str, seed: int) -> None:
    base = load_base(model)
    session = GenerationSession(base.pipeline, model)
    loaded = [session.add_adapter(p, AdapterWeights(weight=0.0)) for p in adapters]
    tiles = []
    for weights in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5)):
        session.set_blend([BlendItem(a, AdapterWeights(weight=w)) for a, w in zip(loaded, weights)])
        settings = GenerationSettings(prompt=prompt, seed=seed, steps=20, guidance=5.0)
        tiles.append(np.asarray(session.generate(settings)[0].image))
    strip = np.concatenate(tiles, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=240)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--scheduler", default="dpm++2m-karras")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--adapters", type=Path, nargs=2, default=None)
    parser.add_argument("--prompt", default="a large purple star in the center, on a yellow background")
    args = parser.parse_args()
    if args.figure:
        blend_figure(args.model, args.adapters, args.figure, args.prompt, seed=0)
        return

    classifier = train_shape_classifier()
    base = load_base(args.model)
    session = GenerationSession(base.pipeline, args.model)
    scenes = list(held_out_scenes(args.prompts))
    images: list[np.ndarray] = []
    started = time.time()
    for start in tqdm(range(0, len(scenes), args.batch), desc="generating"):
        chunk = scenes[start : start + args.batch]
        for offset, scene in enumerate(chunk):
            settings = GenerationSettings(
                prompt=scene.caption,
                seed=start + offset,
                steps=args.steps,
                guidance=args.guidance,
                scheduler=args.scheduler,
            )
            images.append(np.asarray(session.generate(settings)[0].image))
    seconds = time.time() - started

    readings = [read_single(image) for image in images]
    shapes = classifier.predict([r.mask for r in readings])
    truth = [s.objects[0] for s in scenes]
    colour = np.mean([r.colour == o.colour for r, o in zip(readings, truth)])
    background = np.mean([r.background == s.background.top for r, s in zip(readings, scenes)])
    shape = np.mean([p == o.shape for p, o in zip(shapes, truth)])
    by_size = {
        size: float(np.mean([p == o.shape for p, o in zip(shapes, truth) if o.size == size]))
        for size in ("small", "large")
    }
    confusions = Counter(f"{o.shape}->{p}" for p, o in zip(shapes, truth) if p != o.shape)
    summary = {
        "model": args.model,
        "prompts": len(scenes),
        "steps": args.steps,
        "guidance": args.guidance,
        "scheduler": args.scheduler,
        "object_colour_accuracy": round(float(colour), 4),
        "background_colour_accuracy": round(float(background), 4),
        "shape_accuracy": round(float(shape), 4),
        "shape_accuracy_by_size": {k: round(v, 4) for k, v in by_size.items()},
        "shape_classifier_accuracy_on_clean_renders": round(classifier.accuracy, 4),
        "top_shape_confusions": confusions.most_common(5),
        "seconds_per_image": round(seconds / len(scenes), 3),
        "device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        tiles = images[:32] + [np.zeros_like(images[0])] * max(0, 32 - len(images))
        rows = [np.concatenate(tiles[r * 8 : r * 8 + 8], axis=1) for r in range(4)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.out / "sheet.png")
        (args.out / "sheet.txt").write_text("\n".join(s.caption for s in scenes[:32]) + "\n")


if __name__ == "__main__":
    main()
