"""Helpers for the app tests: a real ``python app.py`` server process on a free port, and data.

The app runs as a separate process (as a user starts it), with its own training worker
processes; tests talk to it through ``gradio_client`` or a real Chromium.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from test_adapters_support import make_kohya

from studio.samples import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
# A training run the 2-core CI machine finishes in well under a minute.
TINY_TRAINING = {
    "steps": 3, "resolution": 64, "batch_size": 2, "sample_every": 3, "sample_steps": 2,
    "sample_prompts": ["inkstyle"], "checkpoint_every": 0,
}  # fmt: skip


@contextmanager
def train_tab_page(url: str) -> Iterator[Any]:
    """Debian's Chromium on ``url`` (Playwright), the Train tab rendered; closed afterwards."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#tab-train", state="attached")
        yield page
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _terminal_ctrl_c() -> None:
    """Ctrl-C as in a terminal: a shell's background job (CI started with ``&``) ignores SIGINT, and
    the app would inherit that and never see ``stop()``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class AppProcess:
    """``python app.py --workspace W --port P`` in a subprocess; ``stop()`` is Ctrl-C."""

    def __init__(self, workspace: Path, *extra: str, port: int | None = None):
        self.workspace, self.port = workspace, port or free_port()
        self.log = workspace.parent / f"app-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}/"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "app.py"), "--workspace", str(workspace), "--port", str(self.port), *extra],
                stdout=out, stderr=subprocess.STDOUT, cwd=workspace.parent, preexec_fn=_terminal_ctrl_c,
            )  # fmt: skip
        try:
            wait_for(self._ready, 120, f"the app on port {self.port}")
        except AssertionError:
            self.stop()
            raise AssertionError(self.output()) from None

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the app exited with {self.proc.returncode}:\n{self.output()}")
        return "Running on local URL" in self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dataset_files(folder: Path, count: int = 6) -> list[Path]:
    """The demo dataset's PNGs and captions, as a user would drop them."""
    make_demo_dataset(folder, count=count)
    return sorted(folder.iterdir())


def dataset_zip(path: Path, count: int = 6) -> Path:
    files = dataset_files(path.with_suffix(""), count)
    with zipfile.ZipFile(path, "w") as zf:
        for file in files:
            zf.write(file, f"10_inkstyle/{file.name}")
    return path


def random_adapter(path: Path, seed: int = 3) -> Path:
    """A random kohya LoRA for the embedded default model (whatever its architecture)."""
    from studio.models.loader import load_base

    return make_kohya(path, load_base("default").pipeline, "sd1", seed)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
