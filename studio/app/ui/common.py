"""Shared UI helpers: user errors as toasts that leave the page as it was, never tracebacks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from studio.app.messages import shown_paths
from studio.app.models import AUTO_CONFIG, config_choices
from studio.errors import StudioError

log = logging.getLogger("studio.app")

# Concurrency group of every event that patches the base weights: one runs at a time, the rest queue.
GENERATE = {"concurrency_id": "generate", "concurrency_limit": 1}
# Cheap reads (progress ticks, tables) never wait behind a generation.
LIGHT = {"concurrency_limit": None}

Handler = Callable[..., Any]


def error_text(exc: Exception, root: Path) -> str:
    """The one line a user sees: a ``StudioError`` as it is, anything else as an internal error."""
    if isinstance(exc, gr.Error):
        text = str(exc.message)
    elif isinstance(exc, StudioError):
        text = str(exc)
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); the app keeps running"
    return shown_paths(text, root)


def guard(root: Path, *, api: bool = False, quiet: bool = False) -> Callable[[Handler], Handler]:
    """Wrap an event handler so a failure never blanks the page.

    A UI handler that fails shows a warning toast and leaves every output as it was
    (``gr.skip()``): Gradio would otherwise paint an error over each output component.
    ``quiet`` (timers) only logs. ``api`` handlers raise ``gr.Error`` so a client gets the
    message. Paths in messages are shown relative to the workspace ``root``.
    """

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not isinstance(exc, (StudioError, gr.Error)):
                    log.exception("unexpected error in %s", fn.__name__)
                text = error_text(exc, root)
                if api:
                    raise gr.Error(text, print_exception=False) from None
                if not quiet:
                    gr.Warning(text)
                return gr.skip()

        return wrapper

    return decorate


def number_or_none(value: float | None) -> float | None:
    """Optional numbers (alpha, TE lr, min-SNR gamma): 0 or empty means "not set"."""
    return None if value in (None, "", 0) else float(value)


def int_or_none(value: float | None) -> int | None:
    return None if value in (None, "", 0) else int(value)


def config_picker(ws: Any, choice: str | None) -> dict[str, Any]:
    """The config dropdown beside a base picker: shown, with its family's configs, only while the
    base is a single-file checkpoint (which needs one to load); hidden at "auto" otherwise."""
    choices, _ = config_choices(ws, choice)
    if not choices:
        return gr.update(visible=False, choices=NO_CONFIG, value=AUTO_CONFIG)
    return gr.update(visible=True, choices=choices, value=choices[0][1])


NO_CONFIG = [("auto", AUTO_CONFIG)]  # the config picker's choices while the base is no single file
