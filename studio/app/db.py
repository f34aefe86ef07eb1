"""The workspace database (SQLite, stdlib): training jobs and the adapter library.

One short-lived connection per call, WAL journal, autocommit: the app's threads and the
training worker process write to the same file without sharing a connection, and each
statement is atomic (SQLite's journal), so a killed worker never leaves a half-written row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from studio.errors import StudioError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,            -- new queued running finished failed stopped interrupted
    config TEXT NOT NULL,            -- TrainConfig as JSON
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    segment_step INTEGER,            -- first step of this run segment (after a resume), for the ETA
    segment_time REAL,
    resume INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    adapter_id INTEGER,
    save_requested INTEGER NOT NULL DEFAULT 0,
    saved_step INTEGER,              -- the newest checkpoint's step
    gpus INTEGER NOT NULL DEFAULT 1, -- device slots the job asks for (more than 1: torchrun)
    gpu TEXT                         -- the slots it runs on, e.g. "0" or "0,1" or "cpu"
);
CREATE TABLE IF NOT EXISTS adapters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,              -- kohya .safetensors, relative to the workspace
    diffusers_path TEXT,
    family TEXT,
    rank TEXT,
    trigger TEXT,
    created REAL NOT NULL,
    images INTEGER,
    thumbnail TEXT,
    source TEXT NOT NULL,            -- trained imported baked
    job_id INTEGER
);
"""
# Columns added after the first release: (name, declaration), added to an older workspace's table.
_ADDED = {
    "jobs": [
        ("save_requested", "INTEGER NOT NULL DEFAULT 0"), ("saved_step", "INTEGER"),
        ("gpus", "INTEGER NOT NULL DEFAULT 1"), ("gpu", "TEXT"),
    ],
}  # fmt: skip

ACTIVE = ("queued", "running")
RESUMABLE = ("stopped", "interrupted", "failed")


@dataclass
class Job:
    id: int
    name: str
    status: str
    config: str
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    step: int
    total: int
    epoch: int
    loss: float | None
    segment_step: int | None
    segment_time: float | None
    resume: int
    stop_requested: int
    error: str | None
    adapter_id: int | None
    save_requested: int = 0
    saved_step: int | None = None
    gpus: int = 1
    gpu: str | None = None

    @property
    def config_dict(self) -> dict[str, Any]:
        return json.loads(self.config)


@dataclass
class AdapterRow:
    id: int
    name: str
    path: str
    diffusers_path: str | None
    family: str | None
    rank: str | None
    trigger: str | None
    created: float
    images: int | None
    thumbnail: str | None
    source: str
    job_id: int | None


class Database:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            for table, columns in _ADDED.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
                db.execute("PRAGMA synchronous=FULL")
                yield db
        except sqlite3.DatabaseError as exc:
            raise StudioError(f"workspace database error ({exc})", path=self.path) from None

    def _rows(self, cls: type, sql: str, args: tuple = ()) -> list:
        with self._connect() as db:
            names = [f.name for f in fields(cls)]
            return [cls(*row) for row in db.execute(f"SELECT {', '.join(names)} {sql}", args)]

    def _update(self, table: str, row_id: int, values: dict[str, Any]) -> None:
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self._connect() as db:
            db.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*values.values(), row_id))

    # Jobs.
    def add_job(self, name: str, config: dict[str, Any], status: str = "queued", gpus: int = 1) -> int:
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO jobs (name, status, config, created, gpus) VALUES (?, ?, ?, ?, ?)",
                (name, status, json.dumps(config), time.time(), gpus),
            )
            return int(cursor.lastrowid)

    def job(self, job_id: int) -> Job:
        found = self._rows(Job, "FROM jobs WHERE id = ?", (int(job_id),))
        if not found:
            raise StudioError(f"no training job #{job_id}")
        return found[0]

    def jobs(self) -> list[Job]:
        return self._rows(Job, "FROM jobs ORDER BY id DESC")

    def next_queued(self) -> Job | None:
        found = self.queued()
        return found[0] if found else None

    def queued(self) -> list[Job]:
        """Queued jobs in the order they start: oldest first."""
        return self._rows(Job, "FROM jobs WHERE status = 'queued' ORDER BY id")

    def update_job(self, job_id: int, **values: Any) -> None:
        self._update("jobs", job_id, values)

    def set_status_if(self, job_id: int, current: tuple[str, ...], **values: Any) -> bool:
        """Compare-and-set, so the app and the worker never overwrite each other's final word."""
        assignments = ", ".join(f"{key} = ?" for key in values)
        marks = ", ".join("?" * len(current))
        with self._connect() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
                (*values.values(), job_id, *current),
            )
            return cursor.rowcount == 1

    # Adapters.
    def add_adapter(self, **values: Any) -> int:
        values.setdefault("created", time.time())
        names = ", ".join(values)
        with self._connect() as db:
            try:
                cursor = db.execute(
                    f"INSERT INTO adapters ({names}) VALUES ({', '.join('?' * len(values))})",
                    tuple(values.values()),
                )
            except sqlite3.IntegrityError:
                raise StudioError(
                    f"an adapter named {values.get('name')!r} is already in the library"
                ) from None
            return int(cursor.lastrowid)

    def adapters(self) -> list[AdapterRow]:
        return self._rows(AdapterRow, "FROM adapters ORDER BY created DESC, id DESC")

    def adapter(self, key: int | str) -> AdapterRow:
        column = "id" if isinstance(key, int) else "name"
        found = self._rows(AdapterRow, f"FROM adapters WHERE {column} = ?", (key,))
        if not found:
            raise StudioError(f"no adapter {key!r} in the library")
        return found[0]

    def update_adapter(self, adapter_id: int, **values: Any) -> None:
        try:
            self._update("adapters", adapter_id, values)
        except StudioError as exc:
            if "UNIQUE" in str(exc):
                raise StudioError(
                    f"an adapter named {values.get('name')!r} is already in the library"
                ) from None
            raise

    def delete_adapter(self, adapter_id: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
