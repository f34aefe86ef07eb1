"""Shared UI helpers: user errors as Gradio messages, never tracebacks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.errors import StudioError

log = logging.getLogger("studio.app")

# Concurrency group of every event that patches the base weights: one runs at a time, the rest queue.
GENERATE = {"concurrency_id": "generate", "concurrency_limit": 1}
# Cheap reads (progress ticks, tables) never wait behind a generation.
LIGHT = {"concurrency_limit": None}


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show a ``StudioError`` as a message naming the file and the fix; log anything else."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"internal error ({type(exc).__name__}: {exc}); the app keeps running") from None

    return wrapper


def number_or_none(value: float | None) -> float | None:
    """Optional numbers (alpha, TE lr, min-SNR gamma): 0 or empty means "not set"."""
    return None if value in (None, "", 0) else float(value)


def int_or_none(value: float | None) -> int | None:
    return None if value in (None, "", 0) else int(value)
