"""Seconds per image with N adapters: bare base, our in-place blend (eager and compiled), diffusers.

Issues 3 §10 and 6. One process builds a full-size SD 1.5 or SDXL with random weights (see
common.py), writes random rank-32 kohya LoRA files with our exporter, and times 30-step CFG
generations, all through ``GenerationSession.generate``:

* the bare base and our fast path (``BlendEngine`` patches the weights in place) with
  N = 1, 3, 5 adapters, interleaved: each round makes one image of each, in alternating
  order, so a slow drift of the machine (seen: ±15% over a minute) hits all of them alike;
* diffusers: ``load_lora_weights`` + ``set_adapters`` (peft layers run at every step), same N;
* diffusers ``fuse_lora`` of the 3-adapter blend (unless ``--skip-fused``);
* with ``--compile SPEC`` (repeatable; ``graphs`` for the eager UNet and VAE decoder replayed
  as CUDA graphs, the CLI's default on a GPU, ``graphs-nhwc`` with channels-last weights; an
  inductor mode such as "reduce-overhead"; or a backend), ours through that path with 3
  adapters, last (after diffusers' adapters are unloaded and the base is checked intact): the
  first image, compilation included, then ``--repeats`` images; then a slider change followed
  by one image, twice (style_0 flipped, then back), counting the graphs compiled meanwhile
  (none expected) and comparing with the eager images at the same weights;

and what a patch costs: our first fuse, a slider change (one adapter's weight moves) and a
restore; diffusers' ``set_adapters`` weight change and ``fuse_lora``. With
``--reference-engine FILE`` (a BlendEngine module of another revision, e.g.
``git show REV:studio/mixer/engine.py > /tmp/engine_old.py``) those patch costs are timed for
it too, and its patched weights are checked bit for bit against ours.

    python bench/generate_bench.py --model sd15 --json sd15.json       # GPU, fp16, 512 px
    python bench/generate_bench.py --model sdxl --repeats 3            # GPU, fp16, 1024 px
    python bench/generate_bench.py --model sd15 --counts 3 --skip-fused --compile reduce-overhead
    python bench/generate_bench.py --model sd15 --counts 3 --skip-fused --compile graphs --compile graphs-nhwc
    python bench/generate_bench.py --tiny                              # CPU smoke run
    python bench/generate_bench.py --tiny --counts 3 --compile aot_eager
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import build_pipeline, peak_gib, reset_peak, timed, write_random_loras
from torch._dynamo.utils import counters

from studio.adapters import load_adapter
from studio.generate import DEFAULT, FastPath, GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.models.family import detect_family
from studio.recipes import GenerationSettings

WEIGHTS = (0.8, -0.3, 0.5, 0.6, -0.4)  # adapter i's slider
SLIDER = 0.45  # adapter 0's weight after the slider change
FLIPPED = -WEIGHTS[0]  # adapter 0's weight after the compiled path's slider change: a visible move
FUSED = 3  # N for the diffusers fuse_lora row
COMPILED = 3  # N for the compiled rows


@dataclass
class Results:
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # generation timings
    ops: list[dict[str, Any]] = field(default_factory=list)  # patch/fuse timings
    checks: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path | None) -> None:
        if path:
            path.write_text(json.dumps(self.__dict__, indent=1))


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.started = time.perf_counter()
        self.pipe = build_pipeline(args.model, args.device, getattr(torch, args.dtype))
        self.pipe.vae.to(
            getattr(torch, args.dtype)
        )  # one dtype, as a loaded base (the flow bases' VAE is built fp32)
        self.family = detect_family(self.pipe.components)
        self.settings = GenerationSettings(
            prompt="a watercolor painting of a lighthouse at dusk",
            negative="blurry",
            seed=7,
            steps=args.steps,
            guidance=3.5 if self.family.id == "flux" else 7.0,  # Flux-dev: its distilled guidance
            width=args.size,
            height=args.size,
        )
        self.results = Results(
            meta={k: str(v) for k, v in vars(args).items()} | {"guidance": self.settings.guidance}
        )
        self.images: dict[str, np.ndarray] = {}
        self.peaks: dict[str, float] = {}

    def out_of_time(self, what: str) -> bool:
        if time.perf_counter() - self.started < self.args.time_limit:
            return False
        print(f"[skip] {what}: past --time-limit", flush=True)
        return True

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {text}", flush=True)

    def image(self, label: str, session: GenerationSession) -> float:
        """Seconds for one image; the first image of each label is kept for the image checks."""
        reset_peak(self.device)
        images, seconds = timed(self.device, session.generate, self.settings)
        self.images.setdefault(label, pixels(images[0]))
        self.peaks[label] = max(self.peaks.get(label, 0.0), peak_gib(self.device) or 0.0)
        return seconds

    def record(self, label: str, path: str, adapters: int, times: list[float]) -> None:
        row = {
            "label": label,
            "path": path,
            "adapters": adapters,
            "s_per_image": statistics.median(times),
            "times": times,
            "peak_gib": self.peaks[label] if self.device.startswith("cuda") else None,
        }
        self.results.rows.append(row)
        self.results.save(self.args.json)
        self.log(f"{label}: {row['s_per_image']:.3f} s/img, runs {', '.join(f'{t:.3f}' for t in times)}")

    def generate_row(self, label: str, path: str, adapters: int, session: GenerationSession) -> None:
        """One warm-up image, then ``--diffusers-repeats`` timed ones."""
        self.image(label, session)
        self.record(
            label, path, adapters, [self.image(label, session) for _ in range(self.args.diffusers_repeats)]
        )

    def interleaved(self, adapters: list) -> None:
        """Bare base and ours at each N, one image each per round, order reversed every other round."""
        session = GenerationSession(self.pipe, base=self.args.model, family=self.family)
        blends = {n: blend(adapters, n) for n in (0, *self.args.counts)}
        labels = {n: f"ours N={n}" if n else "bare base" for n in blends}
        times: dict[int, list[float]] = {n: [] for n in blends}
        session.generate(self.settings)  # warm-up: kernels, allocator, cuDNN/cuBLAS plans
        for round_ in range(self.args.repeats):
            if self.out_of_time(f"round {round_ + 1}"):
                break
            for n in list(blends)[:: 1 if round_ % 2 == 0 else -1]:
                session.set_blend(blends[n])
                times[n].append(self.image(labels[n], session))
        if self.args.compile:  # the eager image the compiled one is checked against after its slider change
            session.set_blend(blend(adapters, COMPILED, FLIPPED))
            self.images[f"ours N={COMPILED} flipped"] = pixels(session.generate(self.settings)[0])
        session.close()
        for n, label in labels.items():
            if times[n]:
                self.record(label, "bare base" if n == 0 else "ours (patched in place)", n, times[n])

    def op(self, name: str, adapters: int, fn, *args, **kwargs) -> Any:
        """Time one patch/fuse operation and record it."""
        result, seconds = timed(self.device, fn, *args, **kwargs)
        self.record_op(name, adapters, seconds)
        return result

    def record_op(self, name: str, adapters: int, seconds: float) -> None:
        self.results.ops.append({"op": name, "adapters": adapters, "ms": seconds * 1000})
        self.results.save(self.args.json)
        self.log(f"{name} (N={adapters}): {seconds * 1000:.1f} ms")

    def check(self, name: str, value: Any) -> None:
        self.results.checks[name] = value
        self.results.save(self.args.json)
        self.log(f"{name}: {value}")

    def touched_snapshot(self, keys) -> dict:
        return {key: self.weight(key).detach().to("cpu", copy=True) for key in keys}

    def weight(self, key) -> torch.Tensor:
        return self.pipe.components[key[0]].get_submodule(key[1]).weight

    def base_intact(self, originals: dict) -> bool:
        return all(torch.equal(self.weight(k).detach().cpu(), v) for k, v in originals.items())

    def ours(self, adapters: list, originals: dict) -> None:
        self.interleaved(adapters)
        self.free()
        patched = None  # weights under the full blend, for --reference-engine
        for n in self.args.counts:
            if self.out_of_time(f"ours N={n}"):
                break
            items = blend(adapters, n)
            session = GenerationSession(self.pipe, base=self.args.model, family=self.family)
            self.op("ours: first fuse (cold)", n, session.set_blend, items)
            self.op("ours: slider change", n, session.set_weights, "style_0", AdapterWeights(SLIDER))
            self.op("ours: slider change", n, session.set_weights, "style_0", AdapterWeights(WEIGHTS[0]))
            if n == max(self.args.counts):
                patched = self.touched_snapshot(originals)
            self.op("ours: restore", n, session.close)
            del session
            self.free()
        self.check("restore_bit_exact", self.base_intact(originals))
        if self.args.reference_engine and patched and not self.out_of_time("reference engine"):
            self.reference_engine(adapters, patched)

    def reference_engine(self, adapters, patched: dict) -> None:
        spec = importlib.util.spec_from_file_location("engine_reference", self.args.reference_engine)
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses need it
        spec.loader.exec_module(module)
        engine = module.BlendEngine(self.pipe.components)
        n = max(self.args.counts)
        items = blend(adapters, n)
        self.op("reference engine: first fuse (cold)", n, engine.set_blend, items)
        moved = [BlendItem(adapters[0], AdapterWeights(SLIDER)), *items[1:]]
        self.op("reference engine: slider change", n, engine.set_blend, moved)
        self.op("reference engine: slider change", n, engine.set_blend, items)
        self.check("same_weights_as_reference_engine", self.base_intact(patched))
        self.op("reference engine: restore", n, engine.restore)
        del engine
        self.free()

    def diffusers_files(self, files: list[Path], tmp: Path) -> list[Path]:
        """The files diffusers reads: ours, or on SD3.5 the same tensors in diffusers' own names
        (diffusers 0.42 has no kohya converter for SD3: it loaded none of a kohya file, silently)."""
        if self.family.id != "sd3":
            return files
        (tmp / "diffusers").mkdir()
        args = self.args
        return write_random_loras(
            self.pipe, self.family, tmp / "diffusers", len(files), args.rank, args.preset, kohya=False
        )

    def diffusers(self, files: list[Path]) -> None:
        names = [f.stem for f in files]
        session = GenerationSession(self.pipe, base=self.args.model, family=self.family)  # no blend
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in files:
                self.op(
                    "diffusers: load_lora_weights",
                    1,
                    self.pipe.load_lora_weights,
                    str(f),
                    adapter_name=f.stem,
                )
        for n in self.args.counts:
            if self.out_of_time(f"diffusers N={n}"):
                break
            weights = list(WEIGHTS[:n])
            self.pipe.set_adapters(names[:n], adapter_weights=weights)
            self.generate_row(f"diffusers unfused N={n}", "diffusers set_adapters (unfused)", n, session)
            moved = [SLIDER, *weights[1:]]
            self.op("diffusers: set_adapters weight change", n, self.pipe.set_adapters, names[:n], moved)
        if not self.args.skip_fused and not self.out_of_time("diffusers fused"):
            self.pipe.set_adapters(names[:FUSED], adapter_weights=list(WEIGHTS[:FUSED]))
            self.op("diffusers: fuse_lora", FUSED, self.pipe.fuse_lora, adapter_names=names[:FUSED])
            self.generate_row(f"diffusers fused N={FUSED}", "diffusers fuse_lora", FUSED, session)
            self.pipe.unfuse_lora()
        self.pipe.unload_lora_weights()
        self.free()

    def compiled(self, spec: str, adapters: list) -> None:
        """Our fast path with ``COMPILED`` adapters: first image (compiling), timed images, slider changes."""
        label = f"ours compiled ({spec}) N={COMPILED}"
        fast = fast_path(spec, self.args.channels_last)
        session = GenerationSession(self.pipe, base=self.args.model, family=self.family, fast=fast)
        session.set_blend(blend(adapters, COMPILED))
        graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
        first = self.image(label, session)
        self.record_op(f"{label}: first image, compilation included", COMPILED, first)
        times = [self.image(label, session) for _ in range(self.args.repeats)]
        self.record(label, f"ours + FastPath.parse({spec!r})", COMPILED, times)
        self.check(f"compile seconds ({spec}): first image - median", first - statistics.median(times))
        self.check(f"graphs compiled ({spec})", counters["stats"]["unique_graphs"] - graphs)
        self.check(f"CUDA graph skips ({spec})", counters["inductor"]["cudagraph_skips"] - skips)
        if session.graphs:
            self.check(f"eager graphs captured ({spec})", [g.captures for g in session.graphs])
        graphs = counters["stats"]["unique_graphs"]
        moved = {}
        for weight in (FLIPPED, WEIGHTS[0]):
            moved[weight], seconds = timed(self.device, slider_image, session, weight, self.settings)
            self.record_op(f"{label}: slider change + 1 image (style_0 -> {weight:g})", COMPILED, seconds)
        self.check(
            f"graphs compiled by the slider changes ({spec})", counters["stats"]["unique_graphs"] - graphs
        )
        eager, eager_flipped = (
            self.images.get(f"ours N={COMPILED}"),
            self.images.get(f"ours N={COMPILED} flipped"),
        )
        if eager is not None and eager_flipped is not None:
            self.check(
                f"mean_abs_pixel_diff({label} vs ours eager, same blend)",
                mean_diff(self.images[label], eager),
            )
            self.check("mean_abs_pixel_diff(eager, style_0 flipped vs not)", mean_diff(eager_flipped, eager))
            self.check(
                f"mean_abs_pixel_diff({label} vs ours eager, both style_0 flipped)",
                mean_diff(moved[FLIPPED], eager_flipped),
            )
        self.check(
            f"mean_abs_pixel_diff({label}: flipped back vs first image)",
            mean_diff(moved[WEIGHTS[0]], self.images[label]),
        )
        session.close()
        del session
        self.free()

    def free(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def compiled_rows(self, adapters: list, originals: dict) -> None:
        self.check("base intact before the compiled rows", self.base_intact(originals))
        for spec in self.args.compile:
            if self.out_of_time(f"compiled {spec}"):
                return
            try:
                self.compiled(spec, adapters)
            except Exception as exc:  # one failing mode must not lose the others' figures
                traceback.print_exc()
                self.check(f"error ({spec})", repr(exc))

    def image_checks(self) -> None:
        """Mean |Δpixel| (0..255) of each adapter path's first image from ours at the same N."""
        for label, image in self.images.items():
            if label.startswith("diffusers"):
                ours = self.images.get(f"ours N={label.rsplit('=', 1)[1]}")
                if ours is not None:
                    self.results.checks[f"mean_abs_pixel_diff({label} vs ours)"] = mean_diff(image, ours)
        if "bare base" in self.images and "ours N=3" in self.images:
            diff = mean_diff(self.images["ours N=3"], self.images["bare base"])
            self.results.checks["mean_abs_pixel_diff(ours N=3 vs bare base)"] = diff

    def run(self) -> Results:
        args = self.args
        self.log(f"{args.model} on {device_name(args.device)}, {args.dtype}, {args.steps} steps")
        with tempfile.TemporaryDirectory() as tmp:
            files, seconds = timed(
                "cpu",
                write_random_loras,
                self.pipe,
                self.family,
                Path(tmp),
                max(*args.counts, COMPILED if args.compile else 0),
                args.rank,
                args.preset,
            )
            self.log(f"wrote {len(files)} rank-{args.rank} '{args.preset}' LoRA files in {seconds:.1f} s")
            adapters = [load_adapter(f, self.pipe.components, self.family, name=f.stem) for f in files]
            originals = self.touched_snapshot(set().union(*(a.layers for a in adapters)))
            self.ours(adapters, originals)
            if not args.skip_diffusers:
                self.diffusers(self.diffusers_files(files, Path(tmp)))
            self.compiled_rows(adapters, originals)
        self.image_checks()
        self.results.save(args.json)
        return self.results


def fast_path(spec: str, channels_last: bool) -> FastPath:
    """``graphs``: the eager UNet and VAE decoder replayed as CUDA graphs (the CLI's default on a
    GPU), ``-nhwc`` with channels-last weights, ``-blocks`` with their blocks compiled
    (``graphs-blocks-nhwc``: both); else an inductor mode or backend."""
    kind, *extras = spec.split("-")
    if kind == "graphs" and set(extras) <= {"nhwc", "blocks"}:
        return replace(DEFAULT, channels_last="nhwc" in extras, compile_blocks="blocks" in extras)
    return FastPath.parse(spec, channels_last=channels_last)


def blend(adapters: list, n: int, first_weight: float | None = None) -> list[BlendItem]:
    """The first ``n`` adapters at their ``WEIGHTS`` (adapter 0 at ``first_weight`` when given)."""
    weights = [first_weight if i == 0 and first_weight is not None else w for i, w in enumerate(WEIGHTS[:n])]
    return [BlendItem(a, AdapterWeights(w)) for a, w in zip(adapters[:n], weights)]


def slider_image(session: GenerationSession, weight: float, settings: GenerationSettings) -> np.ndarray:
    """What the Mix tab does when adapter 0's slider moves: re-patch, then one image."""
    session.set_weights("style_0", AdapterWeights(weight))
    return pixels(session.generate(settings)[0])


def pixels(image) -> np.ndarray:
    return np.asarray(image.image, dtype=np.float32)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def print_tables(results: Results) -> None:
    rows, meta = results.rows, results.meta
    median = {r["label"]: r["s_per_image"] for r in rows}

    def speed_up(label: str, row: dict) -> str:
        return f"{median[label] / row['s_per_image']:.2f}×" if label in median else "—"

    print(
        f"\n{meta['model']}, {meta['dtype']}, {meta['steps']} steps, guidance {meta['guidance']}, rank {meta['rank']} '{meta['preset']}'"
    )
    print("| path | N | s/img (median) | min – max | runs | speed-up vs bare base | vs diffusers unfused, same N | peak GiB |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
        spread = f"{min(r['times']):.3f} – {max(r['times']):.3f}"
        unfused = speed_up(f"diffusers unfused N={r['adapters']}", r)
        print(
            f"| {r['label']} | {r['adapters']} | {r['s_per_image']:.3f} | {spread} | {len(r['times'])} "
            f"| {speed_up('bare base', r)} | {unfused} | {peak} |"
        )
    print("\n| operation | N | ms |")
    print("| --- | --- | --- |")
    for o in results.ops:
        print(f"| {o['op']} | {o['adapters']} | {o['ms']:.1f} |")
    for name, value in results.checks.items():
        print(f"check {name}: {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="sd15",
        help="sd15, sd21, sdxl, flux1-dev, sd35-large..., or tiny-sd1 / tiny-sdxl / tiny-flux",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny-sd1, fp32, 2 steps, rank 4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, help="image side in pixels (default: the model's native size)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="interleaved rounds of bare base + ours; timed images of each compiled row",
    )
    parser.add_argument("--diffusers-repeats", type=int, default=2, help="timed images per diffusers row")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--preset", default="full", choices=["cross-attn", "attn", "full"])
    parser.add_argument(
        "--time-limit", type=float, default=float("inf"), help="seconds; later rows are skipped"
    )
    parser.add_argument("--counts", default="1,3,5", help="numbers of adapters to blend, e.g. 3")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--skip-fused", action="store_true", help="no diffusers fuse_lora row")
    parser.add_argument(
        "--compile",
        action="append",
        default=[],
        metavar="SPEC",
        help="add our fast rows: graphs (eager CUDA graphs), an inductor mode (reduce-overhead, "
        "default...) or a backend; repeatable",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC UNet weights in the compiled rows (default: on)",
    )
    parser.add_argument(
        "--reference-engine", type=Path, help="a BlendEngine module to compare patch costs with"
    )
    parser.add_argument("--json", type=Path, help="write every figure here as the run goes")
    args = parser.parse_args(argv)
    args.counts = tuple(int(n) for n in args.counts.split(","))
    if args.tiny:
        args.model, args.device, args.dtype, args.steps, args.rank = "tiny-sd1", "cpu", "float32", 2, 4
        args.repeats, args.diffusers_repeats = min(args.repeats, 3), 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    try:
        bench.run()
    finally:
        print_tables(bench.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
