"""The benchmark history: one SQLite file, $XDG_STATE_HOME/dsv4serve/bench.sqlite (0600), a run per
`dsv4serve bench` with what was measured (plan digest, engine and version, GPUs, client, lengths) and a
row per concurrency level."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from dsv4serve.bench.figures import Level

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    engine TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    plan_digest TEXT NOT NULL,
    gpus TEXT NOT NULL,
    client TEXT NOT NULL,
    input_len INTEGER NOT NULL,
    output_len INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    label TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS levels (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    concurrency INTEGER NOT NULL,
    figures TEXT NOT NULL,
    PRIMARY KEY (run_id, concurrency)
);
"""
RUN_FIELDS = (
    "target",
    "model",
    "engine",
    "engine_version",
    "plan_digest",
    "gpus",
    "client",
    "input_len",
    "output_len",
    "dataset",
    "label",
)


def path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dsv4serve" / "bench.sqlite"


def _connect() -> sqlite3.Connection:
    file = path()
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not file.exists():
        os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o600))
    db = sqlite3.connect(file, timeout=10)
    db.executescript(SCHEMA)
    return db


def save(run: dict, levels: list[Level]) -> int:
    """Store one run; its id."""
    with _connect() as db:
        values = [run[k] for k in RUN_FIELDS]
        cur = db.execute(
            f"INSERT INTO runs (at, {', '.join(RUN_FIELDS)}) VALUES (?, {', '.join('?' * len(RUN_FIELDS))})",
            [time.time(), *values],
        )
        run_id = int(cur.lastrowid)
        db.executemany(
            "INSERT INTO levels (run_id, concurrency, figures) VALUES (?, ?, ?)",
            [(run_id, lv.concurrency, json.dumps(lv.to_dict())) for lv in levels],
        )
    return run_id


def runs(limit: int = 50) -> list[dict]:
    """The latest runs first, each with its levels."""
    if not path().exists():
        return []
    with _connect() as db:
        rows = db.execute(
            f"SELECT id, at, {', '.join(RUN_FIELDS)} FROM runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_with_levels(db, row) for row in rows]


def get(run_id: int) -> dict | None:
    if not path().exists():
        return None
    with _connect() as db:
        row = db.execute(
            f"SELECT id, at, {', '.join(RUN_FIELDS)} FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        return _with_levels(db, row) if row else None


def _with_levels(db: sqlite3.Connection, row: tuple) -> dict:
    run = dict(zip(("id", "at", *RUN_FIELDS), row, strict=True))
    levels = db.execute(
        "SELECT figures FROM levels WHERE run_id = ? ORDER BY concurrency", (run["id"],)
    ).fetchall()
    run["levels"] = [json.loads(figures) for (figures,) in levels]
    return run
