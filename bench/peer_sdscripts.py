"""Side by side with a real peer: kohya sd-scripts' trainer and ours on the same base and data.

Performance round 2, part 2. Three subcommands, run by ``bench/run_peer_gpu.sh`` on the GPU:

* ``prepare``: a full-size SD 1.5 / SDXL with random weights (common.py), written once as an
  original-layout single-file checkpoint (what sd-scripts loads; ``tests/ldm_checkpoint.py``
  writes it), plus a weight-free diffusers config folder (what ``studio train --base-config``
  needs offline), the tokenizer folder(s) sd-scripts reads from ``--tokenizer_cache_dir``, and
  the 20 ``assets/samples/ink-outline`` images upscaled, in kohya's ``10_style`` layout.
* ``wrap``: run a training script (a file, or ``-m module``) in this process with a global
  optimizer-step hook and, at exit, write its step times and peak CUDA memory as JSON. The same
  wrapper times both trainers, so neither is measured by its own progress bar.
* ``summarize``: the per-run JSONs into one table and one results file.

    python bench/peer_sdscripts.py prepare --model sd15 --dir /tmp/peer-run
    python bench/peer_sdscripts.py wrap --json a.json --batch 4 -- .peer/sd-scripts/train_network.py ...
    python bench/peer_sdscripts.py wrap --json b.json --batch 4 -m studio -- train ...
    python bench/peer_sdscripts.py summarize --steps 1000 a.json b.json --out results.json
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
CLIP_L = "openai_clip-vit-large-patch14"  # sd-scripts' tokenizer ids, "/" -> "_"
CLIP_G = "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"


# --- prepare -----------------------------------------------------------------------------------


def _config_folder(pipe: Any, folder: Path) -> None:
    """The pipeline's configs and tokenizers without weights: all ``from_single_file(config=)`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)
    for name, component in pipe.components.items():
        if component is None:
            continue
        target = folder / name
        if name.startswith("tokenizer"):
            component.save_pretrained(target)
        elif hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(target)
        else:  # transformers models
            component.config.save_pretrained(target)


def _tokenizer_cache(sdxl: bool, folder: Path) -> None:
    """``DIR/<hub id with _>/`` in the slow-tokenizer layout transformers 4 reads (vocab.json,
    merges.txt), so sd-scripts never asks the hub. Same vocabulary as the bases' own tokenizer."""
    from studio.models.tokenizer import BOS, DEFAULT_CORPUS, EOS, train_clip_bpe

    vocab, merges = train_clip_bpe(DEFAULT_CORPUS)
    config = {"model_max_length": 77, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    for hub_name in [CLIP_L, CLIP_G] if sdxl else [CLIP_L]:
        target = folder / hub_name
        target.mkdir(parents=True, exist_ok=True)
        (target / "vocab.json").write_text(json.dumps(vocab))
        (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        (target / "tokenizer_config.json").write_text(json.dumps(config))


def _dataset(folder: Path, source: Path, size: int, count: int) -> None:
    from PIL import Image

    target = folder / "10_style"
    target.mkdir(parents=True, exist_ok=True)
    images = sorted(source.glob("*.png"))[:count]
    for path in images:
        Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS).save(target / path.name)
        (target / path.with_suffix(".txt").name).write_text(path.with_suffix(".txt").read_text().strip())
    print(f"dataset: {len(images)} images at {size}px in {target}")


def prepare(args: argparse.Namespace) -> None:
    import torch

    sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
    from common import build_pipeline
    from ldm_checkpoint import pipeline_to_ldm_state_dict
    from safetensors.torch import save_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe = build_pipeline(args.model, device, torch.bfloat16, seed=args.seed)
    state = {
        k: (v.to("cpu", torch.float16) if v.is_floating_point() else v.cpu()).contiguous()
        for k, v in pipeline_to_ldm_state_dict(pipe).items()
    }
    save_file(state, str(out / "base.safetensors"))
    _config_folder(pipe, out / "base-config")
    _tokenizer_cache("tokenizer_2" in pipe.components, out / "tokenizers")
    natives = {"sd15": 512, "sdxl": 1024}
    _dataset(out / "data", Path(args.images), args.resolution or natives.get(args.model, 64), args.count)
    gib = (out / "base.safetensors").stat().st_size / 2**30
    print(
        f"base: {args.model}, {len(state)} tensors, {gib:.2f} GiB fp16, {time.perf_counter() - started:.1f} s"
    )


# --- wrap --------------------------------------------------------------------------------------


def wrap(args: argparse.Namespace, rest: list[str]) -> None:
    """Run the target in this process; the step hook sees every ``Optimizer.step`` of either trainer."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []

    def on_step(optimizer: Any, *_: Any) -> None:
        stamps.append(time.perf_counter())

    register_optimizer_step_post_hook(on_step)

    def report() -> None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        record = {
            "label": args.label,
            "batch": args.batch,
            "argv": rest,
            "process_s": time.perf_counter() - STARTED,
            "first_step_s": stamps[0] - STARTED if stamps else None,
            "steps": len(stamps),
            "stamps": [t - STARTED for t in stamps],
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        }
        Path(args.json).write_text(json.dumps(record))

    atexit.register(report)
    # A run cut off by the shell's `timeout` still reports the steps it made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if args.module:
        sys.argv = [args.module, *rest]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        script = Path(rest[0]).resolve()
        sys.argv = [str(script), *rest[1:]]
        sys.path.insert(0, str(script.parent))
        os.chdir(script.parent)  # sd-scripts imports its own packages relative to its folder
        runpy.run_path(str(script), run_name="__main__")


# --- summarize ---------------------------------------------------------------------------------


def steady_rate(stamps: list[float], skip: int) -> float:
    """Optimizer steps per second after the first ``skip`` steps (compilation, warm-up)."""
    if len(stamps) <= skip + 1:
        return float("nan")
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def summarize_run(record: dict[str, Any], steps: int, skip_fraction: float) -> dict[str, Any]:
    n = record["steps"]
    skip = max(1, int(n * skip_fraction))
    rate = steady_rate(record["stamps"], skip)
    wall = record.get("wall_s", record["process_s"])
    extrapolated = n < steps
    return {
        "label": record["label"],
        "batch": record["batch"],
        "steps_run": n,
        "img_s": rate * record["batch"],
        "step_ms": 1000 / rate,
        "peak_allocated_gib": record["peak_allocated_gib"],
        "peak_smi_gib": record.get("peak_smi_gib"),
        "first_step_s": record["first_step_s"],
        "wall_s_measured": wall,
        f"wall_s_{steps}": wall + (steps - n) / rate if extrapolated else wall,
        "wall_extrapolated": extrapolated,
    }


def summarize(args: argparse.Namespace) -> None:
    runs = []
    for path in args.runs:
        record = json.loads(Path(path).read_text())
        wall = Path(path).with_suffix(".wall")
        if wall.exists():  # the shell's clock: interpreter start-up and imports included
            record["wall_s"] = float(wall.read_text())
        smi = Path(path).with_suffix(".smi")
        if smi.exists():  # nvidia-smi's memory.used (MiB) samples during the run: the whole process
            values = [float(v) for v in smi.read_text().split() if v.replace(".", "").isdigit()]
            record["peak_smi_gib"] = max(values) / 1024 if values else None
        run = summarize_run(record, args.steps, args.skip)
        command = Path(path).with_suffix(".cmd")
        run["command"] = command.read_text().strip() if command.exists() else " ".join(record["argv"])
        run["stamps"] = [round(t, 4) for t in record["stamps"]]
        runs.append(run)
    peer = next((r for r in runs if r["label"].startswith("sd-scripts")), None)
    key = f"wall_s_{args.steps}"
    print(
        f"\n{'run':<28} {'img/s':>7} {'peak GiB':>9} {'smi GiB':>8} {'wall ' + str(args.steps):>10} {'x img/s':>8} {'x wall':>7}"
    )
    for r in runs:
        if peer:
            r["img_s_vs_peer"] = r["img_s"] / peer["img_s"]
            r["wall_vs_peer"] = peer[key] / r[key]
        smi = f"{r['peak_smi_gib']:.1f}" if r["peak_smi_gib"] else "-"
        wall = f"{r[key]:.0f}{'*' if r['wall_extrapolated'] else ''}"
        print(
            f"{r['label']:<28} {r['img_s']:7.2f} {r['peak_allocated_gib'] or 0:9.1f} {smi:>8} {wall:>10}"
            f" {r.get('img_s_vs_peer', 1):7.2f}x {r.get('wall_vs_peer', 1):6.2f}x"
        )
    print("* extrapolated: measured wall + remaining steps at the steady rate")
    if args.out:
        meta = {
            "env": Path(args.env).read_text().splitlines() if args.env else [],
            "skip_fraction": args.skip,
        }
        Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--model", default="sd15", help="sd15, sdxl (random full size)")
    p.add_argument("--dir", required=True)
    p.add_argument("--images", default=str(ROOT / "assets/samples/ink-outline"))
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--resolution", type=int)
    p.add_argument("--seed", type=int, default=0)
    w = sub.add_parser("wrap")
    w.add_argument("--json", required=True)
    w.add_argument("--label", required=True)
    w.add_argument("--batch", type=int, required=True)
    w.add_argument("-m", "--module")
    s = sub.add_parser("summarize")
    s.add_argument("runs", nargs="+")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--skip", type=float, default=0.1, help="fraction of steps left out of the steady rate")
    s.add_argument("--env", help="a text file of versions, kept in the results")
    s.add_argument("--out")
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args)
    elif args.command == "wrap":
        wrap(args, rest)
    else:
        summarize(args)


if __name__ == "__main__":
    main()
