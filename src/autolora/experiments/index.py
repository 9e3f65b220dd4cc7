"""A run folder's layout, and its SQLite index: one row per finished image, plus the metrics computed on them.

A run folder holds ``sweep.json`` (the validated sweep), ``index.sqlite``, ``images/<variant>/*.png``,
``cache/`` (the metrics' cache) and, once reported, ``report/``. This module owns those names; the runner, the report and the CLI
read them from here.

Every image row is written in its own transaction right after its PNG has been renamed into
place, under the image's unique key, so a run killed at any moment keeps every finished image
and never holds a row twice. A busy timeout lets the processes of a multi-GPU run write to the
same file at once; on one host in WAL mode (readers never block the writer), across nodes in
rollback-journal mode, since WAL's shared memory does not reach across machines.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd

INDEX_NAME = "index.sqlite"
CONFIG_NAME = "sweep.json"
IMAGES_DIR = "images"
CACHE_DIR = "cache"
REPORT_DIR = "report"
JournalMode = Literal["WAL", "DELETE"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key TEXT PRIMARY KEY,
    item_index INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    variant TEXT NOT NULL,
    prompt TEXT NOT NULL,
    seed INTEGER NOT NULL,
    params TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    versions TEXT NOT NULL,
    git_revision TEXT,
    process_index INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    config_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    fingerprint TEXT NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('image', 'group')),
    row TEXT NOT NULL
);
"""

# Seconds a writer waits for another process's transaction before giving up.
_BUSY_TIMEOUT_S = 120


class RunIndex:
    """The index of one run folder; each process of a sweep opens its own connection."""

    def __init__(self, run_dir: str | Path, journal_mode: JournalMode | None = None) -> None:
        """Open (or create) the index; ``journal_mode`` is persistent, so only its creator sets it."""
        self.path = Path(run_dir) / INDEX_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every statement outside an explicit BEGIN is its own transaction.
        self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
        if journal_mode is not None:
            self._db.execute(f"PRAGMA journal_mode = {journal_mode}")
        # FULL syncs the WAL at every commit: a committed row survives a crash of the machine too.
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- images ----------------------------------------------------------------------------

    def keys(self) -> set[str]:
        """Keys of every indexed image."""
        return {key for (key,) in self._db.execute("SELECT key FROM images")}

    def add_image(
        self,
        *,
        key: str,
        item_index: int,
        config_hash: str,
        params: Mapping[str, Any],
        path: str,
        sha256: str,
        versions: Mapping[str, str],
        git_revision: str | None,
        process_index: int,
    ) -> None:
        """Index one finished image; re-adding a key replaces its row (the image was regenerated)."""
        self._db.execute(
            "INSERT OR REPLACE INTO images (key, item_index, config_hash, variant, prompt, seed, params, path,"
            " sha256, versions, git_revision, process_index, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                item_index,
                config_hash,
                params["variant"],
                params["prompt"],
                params["seed"],
                json.dumps(dict(params), sort_keys=True),
                path,
                sha256,
                json.dumps(dict(versions), sort_keys=True),
                git_revision,
                process_index,
                time.time(),
            ),
        )

    def images(self) -> pd.DataFrame:
        """Every indexed image, one row each, ordered by its place in the sweep."""
        return pd.read_sql_query("SELECT * FROM images ORDER BY item_index, key", self._db)

    # --- sweeps ----------------------------------------------------------------------------

    def add_sweep(self, config_hash: str, name: str, config: Mapping[str, Any]) -> None:
        """Record a configuration that generated into this run folder."""
        self._db.execute(
            "INSERT OR IGNORE INTO sweeps (config_hash, name, config, created) VALUES (?,?,?,?)",
            (config_hash, name, json.dumps(dict(config), sort_keys=True), time.time()),
        )

    def sweeps(self) -> pd.DataFrame:
        """Every configuration recorded in this run folder, oldest first."""
        return pd.read_sql_query("SELECT * FROM sweeps ORDER BY created", self._db)

    # --- metrics ---------------------------------------------------------------------------

    def metrics_fingerprint(self) -> str | None:
        """Fingerprint of the stored metrics (images and metric settings they were computed on)."""
        row = self._db.execute("SELECT fingerprint FROM metrics LIMIT 1").fetchone()
        return row[0] if row else None

    def store_metrics(self, fingerprint: str, per_image: Iterable[dict], per_group: Iterable[dict]) -> None:
        """Replace the stored metrics, in one transaction."""
        rows = [(fingerprint, "image", _dumps(row)) for row in per_image]
        rows += [(fingerprint, "group", _dumps(row)) for row in per_group]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM metrics")
            self._db.executemany("INSERT INTO metrics (fingerprint, level, row) VALUES (?,?,?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def metrics(self, level: str) -> pd.DataFrame:
        """Stored metric rows of ``level`` ("image" or "group") as a DataFrame."""
        rows = self._db.execute("SELECT row FROM metrics WHERE level = ?", (level,)).fetchall()
        return pd.DataFrame([json.loads(row) for (row,) in rows])


def _dumps(row: Mapping[str, Any]) -> str:
    # NaN is not JSON; metrics that could not be computed are stored as null.
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    return json.dumps(clean, sort_keys=True, default=str)
