"""Metrics of a finished sweep, computed through ``autolora.metrics.evaluate`` a few groups at a time.

Groups go to ``evaluate`` in chunks of whole groups, so that only a chunk of images is in
memory (a paper sweep holds tens of thousands of 1024 px images) while feature batches stay
full. Results are stored in the run index with a fingerprint of the images and metric
settings: an unchanged sweep is not evaluated twice, and ``evaluate``'s own cache (under
``RUN/cache``) spares the per-image work when only some images changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from autolora.experiments.config import SweepConfig, WorkItem, canonical_json
from autolora.experiments.index import CACHE_DIR, RunIndex

# Images handed to one ``evaluate`` call (whole groups, so a single large group may exceed it).
_CHUNK_IMAGES = 1024

Member = tuple[dict[str, Any], str]  # (the image's parameters with its key, its path in the run folder)


def compute_metrics(
    config: SweepConfig, items: Sequence[WorkItem], run_dir: str | Path, *, progress: bool = False
) -> bool:
    """Evaluate the indexed images of ``items`` and store the results; False when they were up to date."""
    from autolora.metrics import evaluate
    from autolora.metrics.registry import ImageRecord

    run_dir = Path(run_dir)
    group_by = config.group_by
    with RunIndex(run_dir) as index:
        images = index.images()
        images = images[images["key"].isin({item.key for item in items})]
        if images.empty:
            return False
        fingerprint = _fingerprint(config, images)
        if index.metrics_fingerprint() == fingerprint:
            return False
        members = [
            # A method that ignores a grouped parameter (gamma for plain LoRA) groups under None.
            ({**dict.fromkeys(group_by), **json.loads(params), "key": key}, path)
            for key, params, path in zip(images["key"], images["params"], images["path"], strict=True)
        ]
        per_image: list[dict[str, Any]] = []
        per_group: list[dict[str, Any]] = []
        for chunk in _chunks(_groups(members, group_by)):
            records = [
                ImageRecord(image=_load(run_dir / path), meta=meta, path=run_dir / path)
                for meta, path in chunk
            ]
            result = evaluate(
                records,
                config.metrics.names,
                group_by=tuple(group_by),
                cache_dir=run_dir / CACHE_DIR,
                options=config.metrics.options,
                progress=progress,
            )
            per_image += _image_rows(result.per_image, [meta["key"] for meta, _ in chunk], group_by)
            per_group += result.per_group.to_dict("records")
        index.store_metrics(fingerprint, per_image, per_group)
    return True


def _fingerprint(config: SweepConfig, images: pd.DataFrame) -> str:
    content = {
        "metrics": config.to_dict()["metrics"],
        "group_by": config.group_by,
        "images": sorted(zip(images["key"], images["sha256"], strict=True)),
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def _groups(members: list[Member], group_by: Sequence[str]) -> list[list[Member]]:
    """``members`` split by their ``group_by`` values, in order of first appearance."""
    from autolora.metrics.evaluate import group_indices

    groups = group_indices([meta[key] for key in group_by] for meta, _ in members)
    return [[members[i] for i in indices] for indices in groups.values()]


def _chunks(groups: list[list[Member]]) -> Iterator[list[Member]]:
    """Consecutive whole groups, about ``_CHUNK_IMAGES`` images at a time."""
    chunk: list[Member] = []
    for group in groups:
        if chunk and len(chunk) + len(group) > _CHUNK_IMAGES:
            yield chunk
            chunk = []
        chunk += group
    if chunk:
        yield chunk


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _image_rows(frame: pd.DataFrame, keys: list[str], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Per-image metric values keyed by the image key (``evaluate`` keeps the records' order).

    The image's parameters, path and hash stay in the index: they are not copied here.
    """
    rows = frame.drop(columns=[c for c in ("sha256", "path", *group_by) if c in frame.columns]).to_dict(
        "records"
    )
    if len(rows) != len(keys):
        raise RuntimeError(f"evaluate returned {len(rows)} per-image rows for {len(keys)} images")
    return [{**row, "key": key} for row, key in zip(rows, keys, strict=True)]
