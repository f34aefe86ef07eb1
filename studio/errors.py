"""Errors a user can act on.

Anything raised as a ``StudioError`` is the user's to fix (a bad path, a wrong
file type, an unusable dataset). The CLI prints it on one line and exits 2; the
app shows it as a message. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class StudioError(Exception):
    """A problem with the user's input, with the file it concerns and how to fix it."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text


class UnsafeFileError(StudioError):
    """A file we refuse to open because reading it could run code (pickle)."""


class DatasetError(StudioError):
    """The dataset has no usable image, or cannot be read at all."""


class TrainingDiverged(StudioError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StopTraining(Exception):  # noqa: N818 - a request, not an error
    """Raised by an ``on_step`` callback to end a run early: it saves a checkpoint and returns."""
