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
