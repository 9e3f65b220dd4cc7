"""Evaluate folders of images: load them with their metadata, run metrics per group, cache per image.

Image-level metrics run once over all images (only those not cached) and their float columns
are summarised per group as means over the images that have a value, with the count of those that do not
(``<column>_n_failed``: a judge reply that did not parse is NaN, never 0). Group-level
metrics run per group after the metrics they ``require``.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from autolora.errors import ConfigError, InputFileError
from autolora.images import IMAGE_SUFFIXES, atomic_write_bytes, read_png_params
from autolora.metrics.cache import MetricsCache
from autolora.metrics.features import FeatureMetric
from autolora.metrics.registry import ImageRecord, Metric, available_metrics, get_metric
from autolora.provenance import package_versions

#: Options that change how a result is obtained, not what it is: left out of cache keys and of
#: the recorded configuration (an API key must never be written to disk).
RUNTIME_OPTIONS = frozenset({"api_key", "concurrency", "timeout", "max_retries", "device", "batch_size"})


@dataclass
class EvaluationResult:
    """Per-image and per-group results of ``evaluate``, with the configuration that produced them."""

    per_image: pd.DataFrame
    per_group: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def to_file(self, path: str | Path) -> list[Path]:
        """Write ``per_image`` to ``path`` (.csv or .parquet), ``per_group`` to ``<stem>.groups<suffix>``
        and ``config`` to ``<stem>.config.json`` next to it; returns the three paths."""
        path = check_results_path(path)
        groups_path = path.with_name(f"{path.stem}.groups{path.suffix}")
        config_path = path.with_name(f"{path.stem}.config.json")
        for frame, target in ((self.per_image, path), (self.per_group, groups_path)):
            buffer = io.BytesIO()
            if path.suffix == ".csv":
                frame.to_csv(buffer, index=False)
            else:
                frame.to_parquet(buffer, index=False)
            atomic_write_bytes(target, buffer.getvalue())
        atomic_write_bytes(config_path, json.dumps(self.config, indent=2, default=str).encode())
        return [path, groups_path, config_path]


def check_results_path(path: str | Path) -> Path:
    """``path`` as a results file (``.csv`` or ``.parquet``); checked before any metric is computed."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"results file must end in .csv or .parquet; got {path.name!r}")
    return path


# --- Loading ---------------------------------------------------------------------------------------


def load_records(folder: str | Path, metadata: str | Path | None = None) -> list[ImageRecord]:
    """Every image in ``folder`` (sorted by name) with its metadata; autolora's comparison grids are skipped.

    Metadata comes from the JSON parameters autolora writes into its PNGs, then from
    ``metadata`` if given: a CSV or JSONL file with a ``file`` column (the image's name) and
    any other fields (``prompt``, ``method``, ...), which take precedence.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    extra = _read_metadata(Path(metadata), {p.name for p in paths}) if metadata is not None else {}
    records = []
    for path in paths:
        try:
            with Image.open(path) as image:
                pixels = image.convert("RGB")
            meta = (read_png_params(path) or {}) if path.suffix.lower() == ".png" else {}
        except (OSError, UnidentifiedImageError, json.JSONDecodeError) as error:
            raise InputFileError(f"cannot read image {path}: {error}") from None
        if meta.get("grid") is True:
            continue  # a comparison grid autolora wrote: a picture of other samples, not a sample
        records.append(ImageRecord(pixels, {**meta, **extra.get(path.name, {})}, path))
    if not records:
        raise InputFileError(f"{folder} holds only comparison grids, no images to evaluate")
    return records


def _read_metadata(path: Path, names: set[str]) -> dict[str, dict[str, Any]]:
    """Rows of a CSV or JSONL metadata file by image name; every row must name an image in ``names``."""
    if not path.is_file():
        raise InputFileError(f"metadata file {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path)
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            table = pd.read_json(path, lines=True)
        else:
            raise InputFileError(f"metadata file {path} must be .csv or .jsonl")
    except (ValueError, pd.errors.ParserError) as error:
        raise InputFileError(f"cannot parse metadata file {path}: {error}") from None
    if "file" not in table.columns:
        raise InputFileError(
            f"metadata file {path} has no 'file' column (columns: {', '.join(table.columns)})"
        )
    rows: dict[str, dict[str, Any]] = {}
    for row in table.to_dict("records"):
        name = Path(str(row.pop("file"))).name
        rows[name] = {k: _python_scalar(v) for k, v in row.items() if not _missing(v)}
    unknown = sorted(set(rows) - names)
    if unknown:
        raise InputFileError(f"metadata file {path} names images not in the folder: {', '.join(unknown[:5])}")
    return rows


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _python_scalar(value: Any) -> Any:
    """Python scalars instead of numpy ones, so metadata compares and serialises as written."""
    return value.item() if hasattr(value, "item") else value


# --- Evaluation ------------------------------------------------------------------------------------


def evaluate(
    records: Sequence[ImageRecord],
    metrics: Sequence[str],
    *,
    group_by: Sequence[str] = ("prompt",),
    reference: Sequence[ImageRecord] | None = None,
    cache_dir: str | Path | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Run ``metrics`` (and those they require) on ``records`` grouped by the metadata keys ``group_by``.

    ``options`` maps metric names to their options, e.g. ``{"diversity": {"extractor": "dinov2"}}``;
    ``reference`` is the set FD and KID compare each group with; with ``cache_dir`` features and
    image-level results persist on disk, so evaluating the same images again computes nothing.
    """
    instances = _checked_metrics(records, metrics, options or {}, reference)
    groups = _group(records, tuple(group_by))
    cache = MetricsCache(cache_dir)
    try:
        _share_features(instances, records, reference, cache)
        image_rows, summaries = _image_metrics(instances, records, reference, cache, groups, progress)
        group_rows = _group_metrics(instances, records, reference, groups, group_by, summaries, progress)
    finally:
        cache.close()
    # Step 5: the tables, and the configuration that produced them.
    per_image = pd.DataFrame(
        [
            {"sha256": r.sha256, "path": str(r.path) if r.path else None, **_group_values(r, group_by), **row}
            for r, row in zip(records, image_rows, strict=True)
        ]
    )
    config = {
        "metrics": {name: _recorded(m.options) for name, m in instances.items()},
        "extractors": {n: m.extractor.id for n, m in instances.items() if isinstance(m, FeatureMetric)},
        "group_by": list(group_by),
        "n_images": len(records),
        "n_reference": len(reference or ()),
        "versions": package_versions(),
    }
    return EvaluationResult(per_image, pd.DataFrame(group_rows), config)


def _checked_metrics(
    records: Sequence[ImageRecord],
    metrics: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    reference: Sequence[ImageRecord] | None,
) -> dict[str, Metric]:
    """Step 1: check the request and build the metrics, each after those it requires."""
    if not records:
        raise ConfigError("no images to evaluate")
    if not metrics:
        raise ConfigError(f"no metrics requested; available: {', '.join(available_metrics())}")
    unknown = sorted(set(options) - set(available_metrics()))
    if unknown:
        raise ConfigError(f"options given for unknown metrics: {', '.join(unknown)}")
    instances = _build_metrics(metrics, options)
    for metric in instances.values():
        if isinstance(metric, FeatureMetric) and metric.uses_reference and not reference:
            raise ConfigError(
                f"metric {metric.name!r} needs reference images (e.g. the LoRA's training images)"
            )
    return instances


def _share_features(
    instances: Mapping[str, Metric],
    records: Sequence[ImageRecord],
    reference: Sequence[ImageRecord] | None,
    cache: MetricsCache,
) -> None:
    """Step 2: features of all images at once (batches fill up better than per group), shared by the metrics."""
    for metric in instances.values():
        if isinstance(metric, FeatureMetric):
            metric.cache = cache
            if metric.level == "group":
                metric.features([*records, *(reference if metric.uses_reference else ())])


def _image_metrics(
    instances: Mapping[str, Metric],
    records: Sequence[ImageRecord],
    reference: Sequence[ImageRecord] | None,
    cache: MetricsCache,
    groups: Mapping[tuple, list[int]],
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Step 3: image-level metrics over all images, then their per-group means and failure counts."""
    image_rows: list[dict[str, Any]] = [{} for _ in records]
    summaries: dict[str, list[dict[str, Any]]] = {}
    image_metrics = [m for m in instances.values() if m.level == "image"]
    for metric in tqdm(image_metrics, desc="image metrics", disable=not progress):
        rows = _image_level(metric, records, reference, cache)
        for target, row in zip(image_rows, rows, strict=True):
            target.update(row)
        summaries[metric.name] = [_summarise([rows[i] for i in indices]) for indices in groups.values()]
    return image_rows, summaries


def _group_metrics(
    instances: Mapping[str, Metric],
    records: Sequence[ImageRecord],
    reference: Sequence[ImageRecord] | None,
    groups: Mapping[tuple, list[int]],
    group_by: Sequence[str],
    summaries: Mapping[str, list[dict[str, Any]]],
    progress: bool,
) -> list[dict[str, Any]]:
    """Step 4: group-level metrics per group, fed the group's results of the metrics they require."""
    group_rows = []
    group_metrics = [m for m in instances.values() if m.level == "group"]
    for g, (key, indices) in enumerate(tqdm(groups.items(), desc="groups", disable=not progress)):
        members = [records[i] for i in indices]
        results = {name: rows[g] for name, rows in summaries.items()}
        for metric in group_metrics:
            inputs = {name: results[name] for name in metric.requires}
            rows = metric.compute(members, reference=reference, inputs=inputs)
            if len(rows) != 1:
                raise RuntimeError(f"group metric {metric.name} returned {len(rows)} rows instead of 1")
            results[metric.name] = rows[0]
        row = {**dict(zip(group_by, key, strict=True)), "n": len(indices)}
        for name in instances:
            row.update(results[name])
        group_rows.append(row)
    return group_rows


def _build_metrics(names: Iterable[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, Metric]:
    """Instances of ``names`` and of the metrics they require, requirements first."""
    built: dict[str, Metric] = {}

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise ConfigError(f"metrics require each other in a cycle: {' -> '.join((*chain, name))}")
        if name in built:
            return
        try:
            metric = get_metric(name, **options.get(name, {}))
        except TypeError as error:
            raise ConfigError(
                f"metric {name!r} does not accept options {dict(options.get(name, {}))}: {error}"
            ) from None
        for requirement in metric.requires:
            add(requirement, (*chain, name))
        built[name] = metric

    for name in names:
        add(name, ())
    return built


def _group_values(record: ImageRecord, group_by: Sequence[str]) -> dict[str, Any]:
    missing = [k for k in group_by if k not in record.meta]
    if missing:
        where = record.path or record.sha256
        raise ConfigError(f"image {where} has no {', '.join(missing)} to group by (give a metadata file?)")
    return {k: record.meta[k] for k in group_by}


def _group(records: Sequence[ImageRecord], group_by: tuple[str, ...]) -> dict[tuple, list[int]]:
    return group_indices(_group_values(record, group_by).values() for record in records)


def group_indices(rows: Iterable[Iterable[Any]]) -> dict[tuple, list[int]]:
    """Indices of the rows with equal values, per distinct values, in order of first appearance.

    Lists and tables (JSON values) compare by content, as their JSON text.
    """
    groups: dict[tuple, list[int]] = {}
    for i, values in enumerate(rows):
        key = tuple(json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v for v in values)
        groups.setdefault(key, []).append(i)
    return groups


def _image_level(
    metric: Metric,
    records: Sequence[ImageRecord],
    reference: Sequence[ImageRecord] | None,
    cache: MetricsCache,
) -> list[dict[str, Any]]:
    """Rows of an image-level metric for ``records``: cached ones looked up, the others computed in one call.

    The cache key holds the metric, its options and the image's prompt, since image-level
    metrics may read it (CLIP score, prompt correspondence). Rows with a NaN (a failed judge
    call) are not stored, so the next evaluation tries those images again.
    """
    keys = [_result_key(metric, r) for r in records]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for key in dict.fromkeys(keys):
        hashes = [r.sha256 for r, k in zip(records, keys, strict=True) if k == key]
        found.update({(key, h): row for h, row in cache.rows(key, hashes).items()})
    todo = [i for i, r in enumerate(records) if (keys[i], r.sha256) not in found]
    if todo:
        rows = metric.compute([records[i] for i in todo], reference=reference)
        if len(rows) != len(todo):
            raise RuntimeError(f"image metric {metric.name} returned {len(rows)} rows for {len(todo)} images")
        fresh: dict[str, dict[str, dict[str, Any]]] = {}
        for i, row in zip(todo, rows, strict=True):
            found[keys[i], records[i].sha256] = row
            if not any(isinstance(v, numbers.Real) and math.isnan(v) for v in row.values()):
                fresh.setdefault(keys[i], {})[records[i].sha256] = row
        for key, by_hash in fresh.items():
            cache.put_rows(key, by_hash)
    return [found[k, r.sha256] for k, r in zip(keys, records, strict=True)]


def _result_key(metric: Metric, record: ImageRecord) -> str:
    return json.dumps(
        {"metric": metric.name, "options": _recorded(metric.options), "prompt": record.meta.get("prompt")},
        sort_keys=True,
        default=str,
    )


def _summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-group mean of each float column over the rows that have a value, and ``<column>_n_failed``."""
    table = pd.DataFrame(list(rows))
    summary: dict[str, Any] = {}
    for column in table.columns:
        # Scores are floats; integer columns are labels (a predicted class) whose mean means nothing.
        if pd.api.types.is_float_dtype(table[column]):
            values = table[column].astype(float)
            summary[column] = float(values.mean()) if values.notna().any() else math.nan
            summary[f"{column}_n_failed"] = int(values.isna().sum())
    return summary


def _recorded(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}
