"""Metrics of a finished sweep, computed group by group through ``autolora.metrics.evaluate``.

Groups are evaluated one at a time so that only one group's images are in memory (a paper
sweep holds tens of thousands of 1024 px images). Results are stored in the run index with a
fingerprint of the images and metric settings: an unchanged sweep is not evaluated twice, and
``evaluate``'s own cache (under ``RUN/cache``) spares per-image work when only some changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from autolora.experiments.config import SweepConfig, WorkItem, canonical_json
from autolora.experiments.index import RunIndex

CACHE_DIR = "cache"


def compute_metrics(config: SweepConfig, items: Sequence[WorkItem], run_dir: str | Path) -> bool:
    """Evaluate the indexed images of ``items`` and store the results; False when they were up to date."""
    from autolora.metrics import evaluate
    from autolora.metrics.registry import ImageRecord

    run_dir = Path(run_dir)
    with RunIndex(run_dir) as index:
        wanted = {item.key for item in items}
        images = index.images()
        images = images[images["key"].isin(wanted)]
        if images.empty:
            return False
        fingerprint = _fingerprint(config, images)
        if index.metrics_fingerprint() == fingerprint:
            return False
        members = [
            ({**json.loads(params), "key": key}, path)
            for key, params, path in zip(images["key"], images["params"], images["path"], strict=True)
        ]
        group_by = config.group_by
        per_image: list[dict[str, Any]] = []
        per_group: list[dict[str, Any]] = []
        for group_values, group in _groups(members, group_by):
            records = [
                ImageRecord(image=_load(run_dir / path), meta=meta, path=run_dir / path)
                for meta, path in group
            ]
            result = evaluate(
                records,
                config.metrics.names,
                group_by=tuple(group_by),
                cache_dir=run_dir / CACHE_DIR,
                options=config.metrics.options,
            )
            per_image += _image_rows(result.per_image, [meta for meta, _ in group])
            per_group += [{**group_values, **row} for row in result.per_group.to_dict("records")]
        index.store_metrics(fingerprint, per_image, per_group)
    return True


def _fingerprint(config: SweepConfig, images: pd.DataFrame) -> str:
    content = {
        "metrics": config.to_dict()["metrics"],
        "group_by": config.group_by,
        "images": sorted(zip(images["key"], images["sha256"], strict=True)),
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def _groups(
    members: list[tuple[dict[str, Any], str]], group_by: Sequence[str]
) -> list[tuple[dict[str, Any], list[tuple[dict[str, Any], str]]]]:
    """(group values, its (meta, path) pairs) in order of first appearance."""
    groups: dict[str, tuple[dict[str, Any], list]] = {}
    for meta, path in members:
        values = {key: meta.get(key) for key in group_by}
        groups.setdefault(canonical_json(values), (values, []))[1].append((meta, path))
    return list(groups.values())


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _image_rows(frame: pd.DataFrame, metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-image rows keyed by the image key (``evaluate`` keeps the records' order)."""
    rows = frame.to_dict("records")
    if rows and len(rows) != len(metas):
        raise RuntimeError(f"evaluate returned {len(rows)} per-image rows for {len(metas)} images")
    return [{**row, "key": meta["key"]} for row, meta in zip(rows, metas, strict=True)]
