"""Where one image's time goes on a fast path: wall time by phase and GPU kernel time by category.

Issue 18 §4 (SD 1.5 with 3 adapters ≤ 0.2 s an image): ``generate_bench.py`` times whole
images; this splits one. For each ``--fast`` spec (as generate_bench's ``--compile``) it builds
a ``GenerationSession`` on the random full-size base with three random rank-32 adapters,
makes two warm-up images, times ``--repeats`` images, then one image with the GPU drained
around each text-encoder, denoiser and VAE-decoder call (phases: where the wall time goes,
"other" being the pipeline's own work between them), and one under torch.profiler (kernel
time by category, as bench/kernel_profile.py sorts it; "GPU idle" is wall time no kernel covers).

    python3 bench/generate_profile.py --model sd15 --fast graphs --fast graphs-blocks-nhwc --json p.json
    python3 bench/generate_profile.py --tiny --fast plain          # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from common import build_pipeline, sync, timed, write_random_loras
from generate_bench import blend, fast_path
from kernel_profile import by_category, kernel_ms, largest

from studio.adapters import load_adapter
from studio.generate import PLAIN, GenerationSession
from studio.models.family import detect_family
from studio.recipes import GenerationSettings

ADAPTERS = 3


class Phases:
    """Wall seconds inside each watched module's calls, the device drained at each edge."""

    def __init__(self, device: str, modules: dict[str, torch.nn.Module]):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._leave(name)))
        self.entered = 0.0

    def _enter(self, *_: Any) -> None:
        sync(self.device)
        self.entered = time.perf_counter()

    def _leave(self, name: str):
        def hook(*_: Any) -> None:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - self.entered
            self.calls[name] += 1

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def watched(pipe: Any, denoiser: str) -> dict[str, torch.nn.Module]:
    modules = {
        name: getattr(pipe, name) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None)
    }
    return modules | {denoiser: getattr(pipe, denoiser), "vae decoder": pipe.vae.decoder}


def kernel_time(device: str, session: GenerationSession, settings: GenerationSettings) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    sync(device)
    started = time.perf_counter()
    with torch.profiler.profile(activities=[activity]) as profiler:
        session.generate(settings)
        sync(device)
    wall_ms = (time.perf_counter() - started) * 1000
    per_kernel = kernel_ms(profiler)
    return {
        "wall_ms_profiled": wall_ms,
        "by_category_ms": by_category(per_kernel, wall_ms),
        "kernels": len(per_kernel),
        "largest_kernels_ms": largest(per_kernel, 15),
    }


def profile(
    spec: str, pipe: Any, adapters: list, args: argparse.Namespace, settings: GenerationSettings
) -> dict:
    fast = PLAIN if spec == "plain" else fast_path(spec, channels_last=True)
    family = detect_family(pipe.components)
    session = GenerationSession(pipe, base=args.model, family=family, fast=fast)
    session.set_blend(blend(adapters, ADAPTERS))
    try:
        _, first = timed(args.device, session.generate, settings)
        session.generate(settings)
        times = [timed(args.device, session.generate, settings)[1] for _ in range(args.repeats)]
        phases = Phases(args.device, watched(pipe, family.denoiser))
        try:
            _, drained = timed(args.device, session.generate, settings)
        finally:
            phases.remove()
        split = dict(phases.seconds) | {"other": drained - sum(phases.seconds.values())}
        row = {
            "spec": spec,
            "first_image_s": first,
            "s_per_image": statistics.median(times),
            "times": times,
            "drained_image_s": drained,
            "phases_s": split,
            "calls": dict(phases.calls),
            "kernels": kernel_time(args.device, session, settings),
        }
    finally:
        session.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny-sd1, fp32, 2 steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fast", action="append", default=[], help="graphs, graphs-blocks-nhwc, plain...")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.model, args.dtype, args.steps, args.repeats = "tiny-sd1", "float32", 2, 2
    pipe = build_pipeline(args.model, args.device, getattr(torch, args.dtype))
    pipe.vae.to(getattr(torch, args.dtype))
    family = detect_family(pipe.components)
    settings = GenerationSettings(
        prompt="a watercolor painting of a lighthouse at dusk",
        negative="blurry",
        seed=7,
        steps=args.steps,
        guidance=7.0,
    )
    results: dict[str, Any] = {"meta": vars(args) | {"json": str(args.json)}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_random_loras(pipe, family, Path(tmp), ADAPTERS, 32, "full")
        adapters = [load_adapter(f, pipe.components, family, name=f.stem) for f in files]
        for spec in args.fast or ["graphs"]:
            try:
                row = profile(spec, pipe, adapters, args, settings)
            except Exception:  # one failing path must not lose the others' figures
                traceback.print_exc()
                continue
            results["rows"].append(row)
            print(json.dumps(row, indent=1), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    for row in results["rows"]:
        phases = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in row["phases_s"].items())
        kernels = ", ".join(f"{k} {v:.1f}" for k, v in row["kernels"]["by_category_ms"].items())
        print(f"{row['spec']}: {row['s_per_image']:.3f} s/img (first {row['first_image_s']:.1f} s); {phases}")
        print(f"  kernel ms: {kernels}")


if __name__ == "__main__":
    main()
