"""Everything the UI and the API share: the workspace, its database, jobs and the mixer."""

from __future__ import annotations

from dataclasses import dataclass

from studio.app.db import Database
from studio.app.jobs import JobManager
from studio.app.mixing import MixService
from studio.app.uploads import UploadLimits
from studio.app.workspace import Workspace


@dataclass
class AppContext:
    ws: Workspace
    db: Database
    jobs: JobManager
    mix: MixService
    limits: UploadLimits

    @classmethod
    def open(cls, workspace: str, limits: UploadLimits | None = None) -> AppContext:
        ws = Workspace.open(workspace)
        db = Database(ws.db_path)
        return cls(ws, db, JobManager(ws, db), MixService(ws, db), limits or UploadLimits())

    def close(self) -> None:
        self.jobs.close()
