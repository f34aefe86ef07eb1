"""``studio demo``: the whole loop offline in under a minute on a laptop CPU.

Draws a tiny style dataset, trains a LoRA on the embedded default model, exports the
kohya file and inspects it. The default model is a tiny random network until a trained
one ships, so its pictures are noise: the demo shows the workflow, not quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.config import TrainConfig
from studio.samples import make_demo_dataset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="train and export a demo adapter on the embedded model")
    parser.add_argument(
        "--out", default="studio-demo", metavar="DIR", help="where to write (default ./studio-demo)"
    )
    parser.add_argument("--steps", type=int, default=60, metavar="N")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from studio.formats.inspect import format_report, inspect_file
    from studio.training.recipe import train

    out = Path(args.out)
    data = make_demo_dataset(out / "dataset")
    config = TrainConfig(
        data=str(data),
        base="default",
        output=str(out / "ink_outline.safetensors"),
        trigger="inkstyle",
        resolution=64,
        steps=args.steps,
        batch_size=4,
        lr=1e-3,
        rank=8,
        sample_every=args.steps,
        sample_steps=10,
    )
    result = train(config)
    window = max(1, len(result.losses) // 4)  # one step's loss is mostly the noise it drew
    first, last = result.losses[:window], result.losses[-window:]
    print(
        f"\ntrained {result.steps} steps in {result.seconds:.1f}s ({result.steps / result.seconds:.2f} steps/s); "
        f"mean loss of the first {window} steps {sum(first) / window:.4f}, of the last {window} {sum(last) / window:.4f}"
    )
    for path in result.outputs:
        print(f"wrote {path}")
    print(f"samples in {result.run_dir / 'samples'}\n")
    print(format_report(inspect_file(result.outputs[0])))
    return 0
