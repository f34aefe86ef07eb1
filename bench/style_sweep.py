"""Which Quick-demo settings learn the sample styles? Train each variant, then run the style checks.

Issue 5 §4. Each variant is a set of overrides of ``studio.presets.SWEEP_BASE`` (the
"Quick demo (embedded model)" preset until 2026-12-03, now the variant "bs2-r16-lr2e-3-s600").
For each, a LoRA is trained on each of two sample styles with ``studio.training.recipe.train``,
then images for held-out prompts are scored exactly as tests/test_style_learning.py scores
them (``trainers.styles``: ``check_scenes``, ``check_weights``, ``score_images``,
``style_checks``): the base, each style at weight 0.5 and 1.0, and a 50/50 blend. One row per
variant is printed; ``style_sweep.json`` in ``--out`` holds every table and is rewritten after
each variant, so a run cut short keeps what it finished.

    python bench/style_sweep.py --out out/sweep 2>out/sweep.err    # every variant; CUDA if present
    python bench/style_sweep.py --device cpu --steps-scale 0.04 --prompts 2 --variants quick,full-lr2e-3

``s/step`` is the median time between the training loop's step events after the first, so a
CPU run of a few steps tells what a variant costs on CI's 2-core machine. Training runs in
fp32 by default, as on CI (``--mixed-precision`` to change it). On CUDA, ``--jobs`` variants
run side by side in their own processes, since one 128 px training leaves an H100 mostly idle;
the base images are drawn once and shared. On CUDA the generators draw other noise than on
the CPU, so the figures differ from CI's as other seeds would.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.generate import GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.models.loader import load_base
from studio.presets import SWEEP_BASE, Preset
from studio.recipes import GenerationSettings
from studio.training.recipe import StepEvent, train
from trainers.styles import (
    CHECK_GUIDANCE,
    CHECK_STEPS,
    STYLES,
    check_scenes,
    check_weights,
    dataset_level,
    failed_checks,
    score_images,
    style_checks,
)
from trainers.toyworld import Scene

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
BASE = Preset("sweep base", "studio.presets.SWEEP_BASE", SWEEP_BASE)  # what every variant overrides

# name -> overrides of BASE; a time limit cuts the tail, so the key ones come first.
# CPU s/step, 2 cores, quiet (bs 4): cross-attn r8 0.09 (0.075 without the text encoder), r16
# 0.09, attn 0.10, full 0.125 (r16 too); bs 2 0.063, bs 8 0.15. So 3 minutes allow far more
# than 150 steps. "cd": caption dropout, so the style is learnt for the empty (CFG) prompt too.
_LR2 = {"lr": 2e-3, "te_lr": 1e-3}
VARIANTS: dict[str, dict[str, Any]] = {
    "quick": {},  # the base itself (the Quick demo until 2026-12-03)
    # Issue 16: the other network types on the base as it is (plain LoRA is "quick").
    "locon": {"network": "locon"},
    "lokr": {"network": "lokr"},
    # LoKr's Kronecker factors hold far fewer weights than LoRA's at the same rank (a 128-wide
    # layer: 8x8 and 16x16, 320 against 2,048), so LyCORIS trains it at higher learning rates.
    "lokr-lr2e-3": {"network": "lokr", **_LR2},
    "lokr-lr4e-3": {"network": "lokr", "lr": 4e-3, "te_lr": 2e-3},
    "dora-lr2e-3": {"dora": True, **_LR2},
    "dora": {"dora": True},
    # DoRA fell short only on ink (57% at lr 1e-3, 56% at 2e-3, CPU): twice the rank for the direction.
    "dora-r16": {"dora": True, "rank": 16, "alpha": 16.0},
    "lokr-r16-lr2e-3": {"network": "lokr", "rank": 16, "alpha": 16.0, **_LR2},
    # --lokr-factor 2: on a 128-wide layer w1 2x2 and w2 64x64 at rank 8 (1,028 weights, against
    # the balanced 8x8 and 16x16: 320).
    "lokr-f2": {"network": "lokr", "lokr_factor": 2},
    "lokr-f2-lr2e-3": {"network": "lokr", "lokr_factor": 2, **_LR2},
    # Still 1-4 points short on ink (2026-12-03): DoRA with more steps or a faster text encoder;
    # LoKr with factor 2 at rank 16 (2,052 weights on a 128-wide layer, LoRA's 2,048).
    "dora-s1500": {"dora": True, "steps": 1500},
    "dora-te1e-3": {"dora": True, "te_lr": 1e-3},
    "lokr-f2-r16-lr2e-3": {"network": "lokr", "lokr_factor": 2, "rank": 16, "alpha": 16.0, **_LR2},
    # DoRA stayed at 56-58% ink through 2026-12-03 while LoCon reached 64%: DoRA on LoCon's 3x3
    # convs too, at a higher rate with rank 16, or scaled twice (alpha 16 on rank 8).
    "dora-locon": {"network": "locon", "dora": True},
    "dora-locon-lr2e-3": {"network": "locon", "dora": True, **_LR2},
    "dora-r16-lr2e-3": {"dora": True, "rank": 16, "alpha": 16.0, **_LR2},
    "dora-a16": {"dora": True, "alpha": 16.0},
    "dora-s1200-te1e-3": {"dora": True, "steps": 1200, "te_lr": 1e-3},
    # Issue 18 §6, the Quick demo under 2 minutes on 2 cores: fewer steps at a higher rate.
    "r16-lr2e-3-s500": {"rank": 16, "alpha": 16.0, **_LR2, "steps": 500},
    "r16-lr3e-3-s400": {"rank": 16, "alpha": 16.0, "lr": 3e-3, "te_lr": 1.5e-3, "steps": 400},
    "r16-lr2e-3-s600": {"rank": 16, "alpha": 16.0, **_LR2, "steps": 600},
    "lr2e-3-s600": {**_LR2, "steps": 600},
    "locon-lr2e-3-s500": {"network": "locon", **_LR2, "steps": 500},
    # ... or half the batch (a step 0.27 s against 0.35 s on the CPU, 2026-12-03) and fewer steps.
    "bs2": {"batch_size": 2},
    "bs2-lr2e-3-s600": {"batch_size": 2, **_LR2, "steps": 600},
    "bs2-r16-lr2e-3-s600": {"batch_size": 2, "rank": 16, "alpha": 16.0, **_LR2, "steps": 600},
    "loha": {"network": "loha"},
    "cd0.2": {"caption_dropout": 0.2},
    "s400": {"steps": 400},
    "lr2e-3-s400": {**_LR2, "steps": 400},
    "lr2e-3-s400-cd0.2": {**_LR2, "steps": 400, "caption_dropout": 0.2},
    "lr2e-3-s400-cd0.5": {**_LR2, "steps": 400, "caption_dropout": 0.5},
    "lr3e-3-s400-cd0.2": {"lr": 3e-3, "te_lr": 1.5e-3, "steps": 400, "caption_dropout": 0.2},
    "lr2e-3-s800-cd0.2": {**_LR2, "steps": 800, "caption_dropout": 0.2},
    "s1000-cd0.2": {"steps": 1000, "caption_dropout": 0.2},
    "full-lr2e-3-s400": {"layers": "full", **_LR2, "steps": 400},
    "full-lr2e-3-s400-cd0.2": {"layers": "full", **_LR2, "steps": 400, "caption_dropout": 0.2},
    "full-s1000-cd0.2": {"layers": "full", "steps": 1000, "caption_dropout": 0.2},
    "full-r16-lr2e-3-s400-cd0.2": {
        "layers": "full",
        "rank": 16,
        "alpha": 16.0,
        **_LR2,
        "steps": 400,
        "caption_dropout": 0.2,
    },  # fmt: skip
    "attn-lr2e-3-s400-cd0.2": {"layers": "attn", **_LR2, "steps": 400, "caption_dropout": 0.2},
    "r16-lr2e-3-s400-cd0.2": {"rank": 16, "alpha": 16.0, **_LR2, "steps": 400, "caption_dropout": 0.2},
    "snr5-lr2e-3-s400-cd0.2": {"min_snr_gamma": 5.0, **_LR2, "steps": 400, "caption_dropout": 0.2},
    "noTE-lr2e-3-s600-cd0.2": {"train_text_encoder": False, "lr": 2e-3, "steps": 600, "caption_dropout": 0.2},
    "te2e-3-lr2e-3-s400-cd0.2": {"lr": 2e-3, "te_lr": 2e-3, "steps": 400, "caption_dropout": 0.2},
    "bs8-lr2e-3-s400-cd0.2": {"batch_size": 8, **_LR2, "steps": 400, "caption_dropout": 0.2},
    "cosine-lr5e-3-s400-cd0.2": {
        "lr": 5e-3,
        "te_lr": 2e-3,
        "steps": 400,
        "lr_scheduler": "cosine",
        "warmup_steps": 20,
        "caption_dropout": 0.2,
    },  # fmt: skip
}

_pipeline: Any = None  # one generation base per process


def _generation_pipeline(device: str) -> Any:
    global _pipeline
    if _pipeline is None:
        _pipeline = load_base("default").pipeline.to(device)
        _pipeline.set_progress_bar_config(disable=True)
    return _pipeline


def _render(session: GenerationSession, weights: dict[str, float], scenes: list[Scene]) -> list[np.ndarray]:
    """As tests/test_style_learning.py renders: image i of scene i with seed i."""
    session.set_blend(
        [BlendItem(i.adapter, AdapterWeights(weight=weights.get(i.adapter.name, 0.0))) for i in session.items]
    )
    settings = [
        GenerationSettings(s.caption, seed=i, steps=CHECK_STEPS, guidance=CHECK_GUIDANCE)
        for i, s in enumerate(scenes)
    ]
    return [np.asarray(session.generate(s)[0].image) for s in settings]


def _train(style: str, overrides: dict[str, Any], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    steps = max(2, round((overrides.get("steps") or BASE.values["steps"]) * args.steps_scale))
    config = BASE.apply(
        data=str(SAMPLES / style),
        output=str(folder / f"{style}.safetensors"),
        sample_every=0,
        checkpoint_every=0,
        mixed_precision=args.mixed_precision,
        **{**overrides, "steps": steps},
    )
    ticks: list[float] = []

    def on_step(event: StepEvent) -> None:
        ticks.append(time.perf_counter())

    started = time.perf_counter()
    result = train(config, on_step=on_step)
    seconds = time.perf_counter() - started
    output, losses = result.outputs[0], result.losses
    del result
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gaps = np.diff(ticks)
    return {
        "adapter": str(output),
        "steps": steps,
        "seconds": round(seconds, 2),
        "step_s": round(float(statistics.median(gaps)), 4) if len(gaps) else None,
        "last_loss": round(float(np.mean(losses[-10:])), 4),
    }


def run_variant(name: str, args: argparse.Namespace, base_images: list[np.ndarray]) -> dict[str, Any]:
    """Train both styles with variant ``name``, render every check setting but the base, score."""
    if time.time() > args.deadline:
        return {"variant": name, "skipped": "time limit"}
    a, b = args.styles
    scenes = check_scenes(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {style: _train(style, VARIANTS[name], args, Path(tmp)) for style in (a, b)}
        started = time.perf_counter()
        session = GenerationSession(_generation_pipeline(args.device), "default")
        try:
            for style in (a, b):
                session.add_adapter(runs[style]["adapter"], AdapterWeights(weight=0.0), name=style)
            images = {
                label: base_images if label == "base" else _render(session, weights, scenes)
                for label, weights in check_weights(a, b).items()
            }
        finally:
            session.close()
    table = score_images(images, scenes, (a, b))
    checks = style_checks(table, args.levels, a, b)
    return {
        "variant": name,
        "overrides": VARIANTS[name],
        "train": {style: {k: v for k, v in run.items() if k != "adapter"} for style, run in runs.items()},
        "generate_s": round(time.perf_counter() - started, 2),
        "table": table,
        "checks": checks,
        "failed": failed_checks(checks),
    }


def _row(result: dict[str, Any], styles: tuple[str, str]) -> str:
    if "skipped" in result:
        return f"{result['variant']:<26} skipped ({result['skipped']})"
    checks, cells = result["checks"], []
    for style in styles:
        run, yes = result["train"][style], {True: "y", False: "n"}
        cells.append(
            f"{run['steps']:>5} {run['step_s'] or 0:>6.3f} {run['seconds']:>7.1f}"
            f" {checks[f'{style} moved']:>5.0%} {yes[checks[f'{style} grows']]:>5}"
            f" {checks[f'{style} colour']:>6.0%} {yes[checks[f'{style} blend']]:>5}"
        )
    return f"{result['variant']:<26} " + " | ".join(cells) + f" | {len(result['failed'])}"


def _header(styles: tuple[str, str]) -> str:
    cell = "steps s/step train_s moved grows colour blend"
    return f"{'':<26} {' | '.join(f'{s:<{len(cell)}}' for s in styles)}\n{'variant':<26} {cell} | {cell} | failed"


def _worker_init(threads: int) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--out", type=Path, default=Path("out/style_sweep"))
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated names; --list shows them"
    )
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--styles", default="ink-outline,halftone", help="two sample styles, comma-separated")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every variant's steps")
    parser.add_argument(
        "--prompts", type=int, default=len(check_scenes()), help="held-out prompts per setting"
    )
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16", "auto"))
    parser.add_argument(
        "--jobs", type=int, default=None, help="variants at once (default: 4 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--time-limit", type=float, default=420.0, help="start no variant after this many s")
    args = parser.parse_args()
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name:<26} {overrides}")
        return
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate then trains on the CPU too
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    styles = tuple(args.styles.split(","))
    if unknown or len(styles) != 2 or any(s not in STYLES for s in styles):
        parser.error(f"unknown variants {unknown} or styles {styles} (want two of {', '.join(STYLES)})")
    args.styles = styles
    args.jobs = args.jobs or (4 if args.device == "cuda" else 1)
    args.deadline = time.time() + args.time_limit
    args.levels = {s: dataset_level(s, SAMPLES) for s in styles}
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    scenes = check_scenes(args.prompts)
    session = GenerationSession(_generation_pipeline(args.device), "default")
    base_images = _render(session, {}, scenes)
    session.close()
    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "styles": styles,
        "levels": args.levels,
        "prompts": args.prompts,
        "steps_scale": args.steps_scale,
        "mixed_precision": args.mixed_precision,
        "jobs": args.jobs,
        "base_s": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(meta), flush=True)
    print(_header(styles), flush=True)
    results: list[dict[str, Any]] = []

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        print(_row(result, styles), flush=True)
        dump = {"meta": {**meta, "seconds": round(time.perf_counter() - started, 1)}, "results": results}
        tmp = args.out / "style_sweep.json.tmp"
        tmp.write_text(json.dumps(dump, indent=1), encoding="utf-8")
        tmp.replace(args.out / "style_sweep.json")

    if args.jobs == 1:
        for name in names:
            record(run_variant(name, args, base_images))
    else:
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // args.jobs)  # no oversubscribed cores
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=_worker_init, initargs=(threads,)
        ) as pool:
            futures = [pool.submit(run_variant, name, args, base_images) for name in names]
            for future in as_completed(futures):
                record(future.result())
    print("\n" + _header(styles))  # again, in list order: the tail of a long log shows it whole
    for result in sorted(results, key=lambda r: names.index(r["variant"])):
        print(_row(result, styles))
    passed = [r["variant"] for r in results if "failed" in r and not r["failed"]]
    print(f"all checks met: {', '.join(passed) or 'none'}; {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
