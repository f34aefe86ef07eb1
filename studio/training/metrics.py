"""``metrics.jsonl``: one line per optimizer step, and its trimming when a run resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.atomic import write_text


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics of steps after the resumed checkpoint: they are about to be redone."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        write_text(path, "".join(line + "\n" for line in kept))


def validation_losses(run_dir: Path) -> dict[int, float]:
    """``{step: val_loss}`` from ``metrics.jsonl`` (a line cut short by a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    found: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                if "val_loss" in record:
                    found[int(record["step"])] = float(record["val_loss"])
            except (ValueError, TypeError, KeyError):
                continue
    return found


def best_validation_step(run_dir: Path, steps: list[int]) -> tuple[int, float] | None:
    """``(step, val_loss)`` of the lowest validation loss among ``steps`` (the run's checkpoints)."""
    losses = validation_losses(run_dir)
    scored = [(losses[s], s) for s in steps if s in losses]
    if not scored:
        return None
    loss, step = min(scored)
    return step, loss
