"""Training's progress bars follow tqdm's own settings: TQDM_DISABLE=1 hides them.

A process of its own each: tqdm reads its ``TQDM_*`` variables when it is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from studio.samples import make_demo_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=4)


@pytest.mark.parametrize("disabled", [False, True], ids=["shown", "TQDM_DISABLE"])
def test_progress_bars_show_unless_tqdm_disable_is_set(dataset, tmp_path, disabled):
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | (
        {"TQDM_DISABLE": "1"} if disabled else {}
    )
    out = tmp_path / "style.safetensors"
    args = ["train", str(dataset), "--output", str(out), "--resolution", "64", "--steps", "2", "--rank", "4"]
    command = [sys.executable, "-c", "import sys; from studio.cli import main; sys.exit(main(sys.argv[1:]))"]
    done = subprocess.run([*command, *args, "--batch-size", "2"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    for bar in ("caching latents", "training"):
        assert (f"{bar}:" in done.stderr) is not disabled, (bar, done.stderr[-500:])
