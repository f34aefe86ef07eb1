"""Issue 18 §6: the Quick-demo preset's wall time on this machine, as the app runs it.

Trains each of the embedded sample styles with the preset exactly as it is (previews and
checkpoints included) and reports the wall time from the call to the exported file, with the
median step for comparing machines. Run it on an otherwise idle machine:

    python bench/quick_demo_time.py --json bench/results/DATE-cpu-quick-demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from studio.presets import get_preset
from studio.training.recipe import StepEvent, train

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
PRESET = "Quick demo (embedded model)"


def time_style(style: str, folder: Path) -> dict:
    config = get_preset(PRESET).apply(data=str(SAMPLES / style), output=str(folder / f"{style}.safetensors"))
    ticks: list[float] = []

    def on_step(event: StepEvent) -> None:
        ticks.append(time.perf_counter())

    started = time.perf_counter()
    result = train(config, on_step=on_step)
    wall = time.perf_counter() - started
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    return {
        "style": style,
        "steps": result.steps,
        "wall_s": round(wall, 1),
        "before_first_step_s": round(ticks[0] - started, 1),
        "median_step_s": round(statistics.median(gaps), 4),
        "after_last_step_s": round(started + wall - ticks[-1], 1),
        "previews": sum(1 for _ in (result.run_dir / "samples").glob("*.png")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", default="ink-outline,halftone")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for style in args.styles.split(","):
            rows.append(time_style(style, Path(tmp)))
            print(json.dumps(rows[-1]))
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "preset": PRESET,
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
