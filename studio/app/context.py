"""Everything the UI and the API share: the workspace, its database, jobs and the mixer."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from studio.app.db import Database
from studio.app.jobs import JobManager
from studio.app.mixing import MixService
from studio.app.uploads import UploadLimits
from studio.app.workspace import Workspace
from studio.errors import StudioError
from studio.generate import PLAIN, FastPath


@dataclass
class AppContext:
    ws: Workspace
    db: Database
    jobs: JobManager
    mix: MixService
    limits: UploadLimits

    @classmethod
    def open(
        cls, workspace: str, limits: UploadLimits | None = None, fast: FastPath = PLAIN,
        slots: list[str] | None = None,
    ) -> AppContext:  # fmt: skip
        """``fast``: the Mix tab's generation path (plain eager by default); ``slots``: the
        training jobs' device slots (``jobs.device_slots``; one CPU slot by default)."""
        ws = Workspace.open(workspace)
        _lock(ws)
        db = Database(ws.db_path)
        jobs = JobManager(ws, db, slots=slots)
        return cls(ws, db, jobs, MixService(ws, db, fast=fast), limits or UploadLimits())

    def close(self) -> None:
        self.jobs.close()


_LOCKS: dict[str, int] = {}


def _lock(ws: Workspace) -> None:
    """One app per workspace: a second one would take the first one's running job for a dead one."""
    if str(ws.root) in _LOCKS:
        return
    fd = os.open(ws.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StudioError(
            "another studio app is already using this workspace",
            path=ws.root,
            hint="open that app, or stop it first, or pass another --workspace",
        ) from None
    _LOCKS[str(ws.root)] = fd  # held until the process exits
