"""The on-disk tier: every accepted sample, durably, in SQLite.

WAL mode with ``synchronous=FULL``: a commit returns only after the write-ahead log is on
stable storage, so a sample is acknowledged only once it would survive a power cut, and a
write torn by a crash is rolled back by SQLite itself on the next open. Image bytes are kept
as sent (PNG or JPEG), with the label. A client may name each sample (``key``): sending the
same key again returns the stored sample's id instead of a second copy, so a client that
retries after a lost reply never duplicates a sample.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS classes (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE, class_id INTEGER NOT NULL REFERENCES classes(id),
    image BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_class ON samples(class_id);
"""


@dataclass(frozen=True)
class StoredSample:
    id: int
    class_id: int
    image: bytes


class SampleStore:
    """Samples and class names in one SQLite file; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._connection() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        yield db

    def add(self, images: Sequence[bytes], labels: Sequence[str],
            keys: Sequence[str | None]) -> list[int]:
        """Store the samples in one transaction; returns their ids (existing ones for keys
        already stored). Returns only after the commit is durable."""
        with self._write_lock, self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [self._insert(db, image, label, key)
                       for image, label, key in zip(images, labels, keys, strict=True)]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return ids

    def _insert(self, db: sqlite3.Connection, image: bytes, label: str, key: str | None) -> int:
        if key is not None:
            row = db.execute("SELECT id FROM samples WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return int(row[0])
        now = time.time()
        db.execute("INSERT OR IGNORE INTO classes(name, created) VALUES (?, ?)", (label, now))
        (class_id,) = db.execute("SELECT id FROM classes WHERE name = ?", (label,)).fetchone()
        cur = db.execute("INSERT INTO samples(key, class_id, image, created) VALUES (?, ?, ?, ?)",
                         (key, class_id, image, now))
        return int(cur.lastrowid)

    def classes(self) -> list[str]:
        """Class names in the order they first arrived (a class's index is its position)."""
        with self._connection() as db:
            return [r[0] for r in db.execute("SELECT name FROM classes ORDER BY id")]

    def count(self, after: int = 0) -> int:
        """Samples stored (with id > ``after``)."""
        with self._connection() as db:
            return int(db.execute("SELECT COUNT(*) FROM samples WHERE id > ?",
                                  (after,)).fetchone()[0])

    def after(self, last_id: int, limit: int) -> list[StoredSample]:
        """Samples with id > ``last_id``, oldest first."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT s.id, c.id, s.image FROM samples s JOIN classes c ON c.id = s.class_id "
                "WHERE s.id > ? ORDER BY s.id LIMIT ?", (last_id, limit)).fetchall()
        return [StoredSample(int(i), int(c) - 1, bytes(b)) for i, c, b in rows]

    def by_ids(self, ids: Sequence[int]) -> list[StoredSample]:
        if not ids:
            return []
        with self._connection() as db:
            marks = ",".join("?" * len(ids))
            rows = db.execute(
                f"SELECT id, class_id, image FROM samples WHERE id IN ({marks})", list(ids))
            found = {int(i): StoredSample(int(i), int(c) - 1, bytes(b)) for i, c, b in rows}
        return [found[i] for i in ids if i in found]

    def random_ids(self, n: int, below: int) -> list[int]:
        """Up to ``n`` random ids among samples with id <= ``below`` (old samples)."""
        with self._connection() as db:
            rows = db.execute("SELECT id FROM samples WHERE id <= ? ORDER BY RANDOM() LIMIT ?",
                              (below, n)).fetchall()
        return [int(r[0]) for r in rows]

    def history(self) -> list[tuple[float, int, int]]:
        """(time, samples so far, classes so far) at each sample's arrival, thinned to
        at most ~200 points, for the status page."""
        with self._connection() as db:
            rows = db.execute("SELECT s.created, s.id, s.class_id FROM samples s "
                              "ORDER BY s.id").fetchall()
        step = max(1, len(rows) // 200)
        out, top = [], 0
        for n, (created, _, class_id) in enumerate(rows, start=1):
            top = max(top, int(class_id))
            if n % step == 0 or n == len(rows):
                out.append((float(created), n, top))
        return out

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
