"""Conversations the router has seen and the model each is on, in SQLite: one file for all the workers.

With several workers on one SO_REUSEPORT socket, the kernel hands each new connection to any of them,
so one conversation's turns land on different workers; state kept per worker would classify a
conversation once per worker and could send its turns to different models. The workers share one
database file instead (WAL: readers never wait for the writer), in the router's private directory; one
worker keeps it in memory. Every change is one short transaction, so concurrent workers never lower a
conversation's model and the cap holds across all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from typing import Any

TIERS = ("flash", "pro")  # in escalation order
SESSION_HEADER = "x-session-id"
TOUCH_S = 1.0  # a conversation's last-seen time is written at most this often (a read costs no write)


def session_key(body: dict, endpoint: str, session_id: str | None) -> str | None:
    """A conversation's identity: the client's x-session-id, else a hash of its first system and user
    messages (a chat request's; a completion has no turns, so only the header makes it one)."""
    if session_id:
        return "h:" + hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()[:32]
    messages = body.get("messages") if endpoint == "chat" else None
    if not isinstance(messages, list):
        return None
    first: dict[str, Any] = {}
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "user"):
            first.setdefault(message["role"], message.get("content"))
    if "user" not in first:
        return None
    raw = json.dumps([first.get("system"), first["user"]], sort_keys=True, default=str)
    return "m:" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32]


class SessionStore:
    """Conversation -> model, forgotten after idle_s without a turn, at most max_sessions of them (the
    least recently seen go first). path: the shared file, or None for one process's memory."""

    def __init__(self, path: str | None, idle_s: float, max_sessions: int):
        self.idle_s, self.max_sessions = idle_s, max_sessions
        # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE below (the write lock up
        # front: two workers never both read, then both write). check_same_thread off: made in one
        # thread, used by the event loop's (one at a time).
        self.db = sqlite3.connect(
            path or ":memory:", timeout=2.0, isolation_level=None, check_same_thread=False
        )
        if path:
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # nothing here must outlive the router
        with self._write():
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, tier INTEGER NOT NULL,"
                " seen REAL NOT NULL) WITHOUT ROWID"
            )
            self.db.execute("CREATE INDEX IF NOT EXISTS sessions_seen ON sessions (seen)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('count', 0)")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _write(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get(self, key: str, now: float | None = None) -> str | None:
        """The conversation's model, or None when it is new or was idle too long; a turn counts as seen."""
        now = time.time() if now is None else now
        row = self.db.execute("SELECT tier, seen FROM sessions WHERE key = ?", (key,)).fetchone()
        if row is None or row[1] < now - self.idle_s:
            return None
        if now - row[1] >= TOUCH_S:
            with self._write():
                self.db.execute("UPDATE sessions SET seen = max(seen, ?) WHERE key = ?", (now, key))
        return TIERS[row[0]]

    def escalate(self, key: str, tier: str, now: float | None = None) -> tuple[str, int]:
        """Record `tier` for the conversation, never below the model it is on: (its model now, how many
        conversations were evicted to make room)."""
        now = time.time() if now is None else now
        level, evicted = TIERS.index(tier), 0
        with self._write():
            row = self.db.execute("SELECT tier, seen FROM sessions WHERE key = ?", (key,)).fetchone()
            live = row is not None and row[1] >= now - self.idle_s
            if live and row[0] >= level:
                self.db.execute("UPDATE sessions SET seen = max(seen, ?) WHERE key = ?", (now, key))
                return TIERS[row[0]], 0
            self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)", (key, level, now))
            if row is None:
                evicted = self._make_room(now)
        return tier, evicted

    def _make_room(self, now: float) -> int:
        """After an insert: drop the idle, then the least recently seen beyond the cap (in the caller's
        transaction). A counter, not count(*): that would read the whole table each time."""
        expired = self.db.execute("DELETE FROM sessions WHERE seen < ?", (now - self.idle_s,)).rowcount
        (count,) = self.db.execute("SELECT v FROM meta WHERE k = 'count'").fetchone()
        count += 1 - expired
        over = max(0, count - self.max_sessions)
        if over:
            self.db.execute(
                "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions ORDER BY seen LIMIT ?)", (over,)
            )
        self.db.execute("UPDATE meta SET v = ? WHERE k = 'count'", (count - over,))
        return over

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM sessions").fetchone()[0]
