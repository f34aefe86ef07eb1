"""Training's progress bars: tqdm, hidden in the processes that are not the main one.

Why a function: tqdm lets its ``TQDM_*`` variables (``TQDM_DISABLE=1`` in a log-only job)
set only the arguments a caller leaves out, so ``disable`` is passed only to hide a bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable[Any] | None = None, *, shown: bool = True, **kwargs: Any) -> tqdm:
    return tqdm(iterable, **kwargs, **({} if shown else {"disable": True}))
