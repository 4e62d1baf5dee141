"""On-disk embedding cache keyed by (encoder name, content hash)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np


class EmbeddingCache:
    """A SQLite file mapping (encoder, sha1 of content) -> float32 vector.

    One file, safe across processes (SQLite locking), so re-runs of an evaluation or an
    ingest skip every item already embedded with the same encoder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emb (encoder TEXT, key TEXT, vec BLOB, "
            "PRIMARY KEY (encoder, key))"
        )
        self._db.commit()

    def get_many(self, encoder: str, keys: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for s in range(0, len(keys), 500):
                chunk = keys[s : s + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, vec FROM emb WHERE encoder=? AND key IN ({marks})",
                    [encoder, *chunk],
                ).fetchall()
                for k, v in rows:
                    out[k] = np.frombuffer(v, dtype=np.float32)
        return out

    def put_many(self, encoder: str, pairs: list[tuple[str, np.ndarray]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                [(encoder, k, np.asarray(v, np.float32).tobytes()) for k, v in pairs],
            )
            self._db.commit()

    def count(self, encoder: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM emb" + (" WHERE encoder=?" if encoder else "")
        with self._lock:
            return int(self._db.execute(q, [encoder] if encoder else []).fetchone()[0])

    def close(self) -> None:
        self._db.close()
