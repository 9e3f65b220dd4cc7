"""Features and image-level results stored per image hash, in memory and optionally in SQLite.

One SQLite file per cache folder holds both tables. SQLite is used because several
evaluations (one per experiment, say) may share a cache folder at once: its file locking
and write-ahead log make concurrent readers and writers safe, and an interrupted run never
leaves a half-written entry behind.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from autolora.errors import InputFileError
from autolora.metrics.registry import ImageRecord

if TYPE_CHECKING:
    from autolora.metrics.features import FeatureExtractor

CACHE_FILE = "metrics-cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    extractor TEXT NOT NULL, sha256 TEXT NOT NULL, dim INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (extractor, sha256));
CREATE TABLE IF NOT EXISTS results (
    key TEXT NOT NULL, sha256 TEXT NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (key, sha256));
"""


class MetricsCache:
    """Features keyed by ``(extractor.id, sha256)`` and image-level rows keyed by ``(key, sha256)``.

    Without a folder everything lives in memory for the lifetime of the object, which still
    lets several metrics of one evaluation share features.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self._features: dict[tuple[str, str], torch.Tensor] = {}
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        # One instance per extractor id, so metrics sharing an extractor load its model once.
        self._extractors: dict[str, FeatureExtractor] = {}
        self._db: sqlite3.Connection | None = None
        if folder is not None:
            path = Path(folder)
            try:
                path.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path / CACHE_FILE, timeout=120)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
            except (OSError, sqlite3.Error) as error:
                raise InputFileError(f"cannot open the metrics cache in {path}: {error}") from None

    def close(self) -> None:
        """Close the database file (the in-memory entries stay readable)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def features(self, extractor: FeatureExtractor, records: Sequence[ImageRecord]) -> torch.Tensor:
        """``(N, d)`` features of ``records``, computing only those not cached yet (in one call)."""
        extractor = self._extractors.setdefault(extractor.id, extractor)
        key = extractor.id
        missing = [r for r in _unique(records) if (key, r.sha256) not in self._features]
        if missing and self._db is not None:
            self._load_features(key, [r.sha256 for r in missing])
            missing = [r for r in missing if (key, r.sha256) not in self._features]
        if missing:
            computed = extractor([r.image for r in missing]).detach().to("cpu", torch.float32)
            if computed.shape[0] != len(missing):
                raise RuntimeError(
                    f"extractor {key} returned {computed.shape[0]} rows for {len(missing)} images"
                )
            for record, row in zip(missing, computed, strict=True):
                self._features[key, record.sha256] = row
            if self._db is not None:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)",
                        [
                            (key, r.sha256, row.numel(), row.numpy().tobytes())
                            for r, row in zip(missing, computed, strict=True)
                        ],
                    )
        return torch.stack([self._features[key, r.sha256] for r in records])

    def rows(self, key: str, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The cached image-level rows under ``key`` for those of ``hashes`` that have one."""
        found = {h: self._rows[key, h] for h in hashes if (key, h) in self._rows}
        if self._db is not None:
            for sha256, row in self._select(
                "SELECT sha256, row FROM results WHERE key = ?", key, hashes, found
            ):
                found[sha256] = self._rows[key, sha256] = json.loads(row)
        return found

    def put_rows(self, key: str, rows: dict[str, dict[str, Any]]) -> None:
        """Store image-level ``rows`` (by image hash) under ``key``."""
        self._rows.update({(key, h): row for h, row in rows.items()})
        if self._db is not None:
            with self._db:
                # Keys keep the metric's order, so cached and fresh rows give the same column order.
                self._db.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                    [(key, h, json.dumps(row, default=_storable)) for h, row in rows.items()],
                )

    def _load_features(self, key: str, hashes: Sequence[str]) -> None:
        query = "SELECT sha256, dim, data FROM features WHERE extractor = ?"
        for sha256, dim, data in self._select(query, key, hashes, {}):
            array = np.frombuffer(data, dtype=np.float32, count=dim).copy()
            self._features[key, sha256] = torch.from_numpy(array)

    def _select(self, query: str, key: str, hashes: Sequence[str], skip: dict[str, Any]) -> list[tuple]:
        """Rows of ``query`` for the hashes not in ``skip``, in chunks that fit SQLite's parameter limit."""
        assert self._db is not None
        wanted = [h for h in dict.fromkeys(hashes) if h not in skip]
        result = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            result += self._db.execute(f"{query} AND sha256 IN ({marks})", (key, *chunk)).fetchall()
        return result


def _storable(value: Any) -> Any:
    """numpy and torch scalars as Python numbers, so metrics may return either."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in the metrics cache")


def _unique(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """``records`` without repeated images (same hash)."""
    return list({r.sha256: r for r in records}.values())
