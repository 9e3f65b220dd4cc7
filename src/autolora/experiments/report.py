"""Reports of a run folder: paper-style tables, plots along the swept axes and same-noise image grids.

Tables give each metric's mean with its 95% confidence interval for every variant and grid point:
a percentile bootstrap of the mean, which never leaves the range of the values, so a bounded score
(a probability, a 0-5 judge score) keeps its interval inside its bounds. The interval is over groups
(prompts, say) when a cell holds several, and over the images (seeds) of the cell's single group for
image-level metrics; a cell with one value has no interval. When diversity was measured, a Pareto
plot per other metric marks the settings no other setting beats on both. The Markdown report links
its figures; the HTML report embeds them (base64), so it is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from PIL import Image

from autolora.errors import ConfigError, InputFileError
from autolora.experiments.index import CONFIG_NAME, INDEX_NAME, REPORT_DIR, RunIndex
from autolora.images import atomic_write_bytes, make_grid
from autolora.pareto import pareto_mask
from autolora.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, mean_ci95

ReportFormat = Literal["md", "html"]
ExportFormat = Literal["csv", "parquet"]

# Grids stay readable and the HTML page small: at most this many rows, seeds and prompts, thumbnails this big.
_GRID_MAX_ROWS = 16
_GRID_MAX_SEEDS = 8
_GRID_MAX_PROMPTS = 4
_THUMBNAIL_PX = 192
# Diversity metrics: the vertical axis of the Pareto plots, against every other metric.
_DIVERSITY_METRICS = ("diversity", "vendi")


@dataclass
class RunData:
    """What a report is made of: the sweep's settings, its images and its metrics."""

    name: str
    axes: list[str]
    group_by: list[str]
    variants: list[str]
    images: pd.DataFrame
    per_image: pd.DataFrame
    per_group: pd.DataFrame
    metric_names: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Files written by :func:`build_report`."""

    files: list[Path]
    summary: pd.DataFrame


def load_run(run_dir: str | Path) -> RunData:
    """Read the index and metrics of ``run_dir`` (a folder written by ``autolora sweep``)."""
    run_dir = Path(run_dir)
    if not (run_dir / INDEX_NAME).is_file() or not (run_dir / CONFIG_NAME).is_file():
        raise InputFileError(f"{str(run_dir)!r} is not a run folder (no {INDEX_NAME} or {CONFIG_NAME})")
    config = json.loads((run_dir / CONFIG_NAME).read_text())
    with RunIndex(run_dir) as index:
        images = index.images()
        per_image = index.metrics("image")
        per_group = index.metrics("group")
    if images.empty:
        raise InputFileError(f"{str(run_dir)!r} holds no image yet; run autolora sweep first")
    params = pd.DataFrame([json.loads(p) for p in images["params"]])
    images = pd.concat([images.drop(columns=["variant", "prompt", "seed"]), params], axis=1)
    # List-valued settings (an interval) become tuples, so they can key groups and label cells.
    images, per_group = (frame.map(_hashable) if not frame.empty else frame for frame in (images, per_group))
    variants = [v["name"] for v in config["variants"]] or ["default"]
    return RunData(
        name=config["name"],
        axes=config["axes"],
        group_by=config["group_by"],
        variants=variants,
        images=images,
        per_image=per_image,
        per_group=per_group,
        metric_names=list(config["metrics"]["names"]),
    )


def summarize(run: RunData) -> pd.DataFrame:
    """One row per (variant, grid point, metric): mean, 95% CI bounds, n and what n counts."""
    cells = ["variant", *run.axes]
    rows = []
    per_group = _groups_with_image_means(run)
    by_image_frame = _with_cells(run, cells)
    for metric in _metric_columns(run):
        by_group = _cell_values(per_group, cells, metric)
        by_image = _cell_values(by_image_frame, cells, metric)
        for cell in sorted(set(by_group) | set(by_image), key=_sort_key):
            values, unit = by_group.get(cell, []), "groups"
            if len(values) < 2 and len(by_image.get(cell, [])) >= 2:
                values, unit = by_image[cell], "images"
            mean, low, high = mean_ci95(values)
            stats = {
                "metric": metric,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n": len(values),
                "over": unit,
            }
            rows.append({**dict(zip(cells, cell, strict=True)), **stats})
    return pd.DataFrame(rows, columns=[*cells, "metric", "mean", "ci_low", "ci_high", "n", "over"])


def paper_table(run: RunData, summary: pd.DataFrame) -> pd.DataFrame:
    """The summary laid out like the paper: grid points as rows, (variant, metric) as columns."""
    if summary.empty:
        return pd.DataFrame()
    text = summary.assign(cell=[_cell_text(r.mean, r.ci_low, r.ci_high) for r in summary.itertuples()])
    # A method that ignores an axis (gamma for plain LoRA) gets its own "—" row instead of none.
    text[run.axes] = text[run.axes].astype(object).where(text[run.axes].notna(), "—")
    rows = run.axes or ["variant"]
    columns = ["variant", "metric"] if run.axes else ["metric"]
    table = text.pivot_table(index=rows, columns=columns, values="cell", aggfunc="first", sort=False)
    if run.axes:
        order = [(v, m) for v in run.variants for m in _metric_columns(run) if (v, m) in table.columns]
        table = table[order]
        table.columns = [f"{v} {m}" for v, m in table.columns]
    else:
        table = table.reindex([v for v in run.variants if v in table.index])
    return table.reset_index()


def build_report(
    run_dir: str | Path,
    formats: Sequence[ReportFormat] = ("md", "html"),
    export: Sequence[ExportFormat] = (),
) -> Report:
    """Write the report of ``run_dir`` into ``run_dir/report``; returns the files written and the summary."""
    for fmt in formats:
        if fmt not in ("md", "html"):
            raise ConfigError(f"--format: unknown report format {fmt!r}; choose md or html")
    for fmt in export:
        if fmt not in ("csv", "parquet"):
            raise ConfigError(f"--export: unknown export format {fmt!r}; choose csv or parquet")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    summary = summarize(run)
    table = paper_table(run, summary)
    figures = [*_plots(run, summary, out), *pareto_plots(summary, run.axes, out), *_grids(run, run_dir, out)]
    files = [path for _, path in figures]
    if "md" in formats:
        files.append(_write(out / "report.md", _markdown(run, table, figures, summary)))
    if "html" in formats:
        files.append(_write(out / "report.html", _html(run, table, figures)))
    for fmt in export:
        files += _export(run, summary, out, fmt)
    return Report(files=files, summary=summary)


# --- Tables -----------------------------------------------------------------------------------


def _metric_columns(run: RunData) -> list[str]:
    """Numeric metric columns, the configured metrics first."""
    # "n" and "<metric>_n_failed" count images: they are not measurements.
    known = set(run.images.columns) | {"key", "variant", "prompt", "seed", "n", *run.axes, *run.group_by}
    found = []
    for frame in (run.per_group, run.per_image):
        for column in frame.columns:
            numeric = pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(
                frame[column]
            )
            # Predicted class labels (world:digit's digit_pred) are numbers but not measurements.
            counts = column.endswith(("_n_failed", "_pred"))
            if numeric and column not in known and column not in found and not counts:
                found.append(column)
    ordered = [m for m in run.metric_names if m in found]
    return ordered + [c for c in found if c not in ordered]


def _groups_with_image_means(run: RunData) -> pd.DataFrame:
    """Per-group metrics, completed with the group means of image-level metrics the groups lack."""
    image_only = [
        c for c in _metric_columns(run) if c in run.per_image.columns and c not in run.per_group.columns
    ]
    if not image_only:
        return run.per_group
    means = _with_cells(run, run.group_by).groupby(run.group_by, dropna=False, sort=False)[image_only].mean()
    means = means.reset_index()
    if run.per_group.empty or not set(run.group_by) <= set(run.per_group.columns):
        return means
    return run.per_group.merge(means, on=run.group_by, how="outer")


def _with_cells(run: RunData, cells: list[str]) -> pd.DataFrame:
    """Per-image metrics with the image's variant and grid point (taken from the index, the source of truth)."""
    if run.per_image.empty or "key" not in run.per_image.columns:
        return pd.DataFrame()
    metrics = run.per_image[[c for c in run.per_image.columns if c not in cells]]
    return metrics.merge(run.images[["key", *cells]], on="key")


def _cell_values(frame: pd.DataFrame, cells: list[str], metric: str) -> dict[tuple, list[float]]:
    if frame.empty or metric not in frame.columns or not set(cells) <= set(frame.columns):
        return {}
    return {
        tuple(_none_if_nan(v) for v in (key if isinstance(key, tuple) else (key,))): list(
            group[metric].dropna()
        )
        for key, group in frame.groupby(cells, dropna=False, sort=False)
    }


def _hashable(value: object) -> object:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _none_if_nan(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def _sort_key(cell: tuple) -> tuple:
    """Numbers in order, then text, then missing values (a method that ignores the axis)."""
    return tuple(
        (v is None, not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v))
        for v in cell
    )


def _cell_text(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(low):
        return f"{mean:.3f}"
    # A bootstrap interval is not symmetric about the mean: both bounds are shown.
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


# --- Figures ----------------------------------------------------------------------------------


def _plots(run: RunData, summary: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Metric vs each numeric swept axis, one line (with its 95% CI band) per variant and other-axis setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    for axis in run.axes:
        values = summary[axis].dropna()
        if values.empty or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            continue
        others = [a for a in run.axes if a != axis]
        for metric in summary["metric"].unique():
            data = summary[summary["metric"] == metric]
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, line in data.groupby(["variant", *others], sort=False, dropna=False):
                name = " ".join(str(v) for v in (label if isinstance(label, tuple) else (label,)) if v == v)
                on_axis = line[line[axis].notna()].sort_values(axis)
                if not on_axis.empty:
                    ax.plot(on_axis[axis], on_axis["mean"], marker="o", label=name)
                    ax.fill_between(on_axis[axis], on_axis["ci_low"], on_axis["ci_high"], alpha=0.2)
                # A variant that ignores the axis (plain LoRA against gamma) is a horizontal reference.
                for mean in line.loc[line[axis].isna(), "mean"]:
                    ax.axhline(mean, linestyle="--", color="gray", label=f"{name} (no {axis})")
            ax.set(xlabel=axis, ylabel=metric, title=f"{metric} vs {axis}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = out / f"plot-{_file_part(metric)}-vs-{_file_part(axis)}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            figures.append((f"{metric} vs {axis}", path))
    return figures


def pareto_fronts(summary: pd.DataFrame, axes: Sequence[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """For (diversity, other metric) pairs of ``summary``: each setting's two means and ``on_front``, whether
    no other setting beats it on both (both maximised). Settings are indexed by (variant, *axes)."""
    metrics = list(summary["metric"].unique())
    diversity = next((m for m in _DIVERSITY_METRICS if m in metrics), None)
    if diversity is None:
        return {}
    means = summary.pivot_table(
        index=["variant", *axes], columns="metric", values="mean", dropna=False, sort=False
    )
    fronts = {}
    for other in [m for m in metrics if m not in _DIVERSITY_METRICS]:
        points = means[[other, diversity]].dropna()
        if len(points) >= 2:
            fronts[(diversity, other)] = points.assign(on_front=pareto_mask(points.to_numpy().tolist()))
    return fronts


def pareto_plots(
    summary: pd.DataFrame,
    axes: Sequence[str],
    out: Path,
    *,
    floor: tuple[str, float | None] | None = None,
    label: Callable[[tuple], str] | None = None,
) -> list[tuple[str, Path]]:
    """Diversity against each other metric of ``summary`` (rows: variant, ``axes``, metric, mean), one point
    per setting, each labelled (by ``label(cell)``, default ``variant axis=value ...``); the Pareto front is
    drawn and circled, ``floor`` (metric, value) a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    for (diversity, other), points in pareto_fronts(summary, axes).items():
        front = points["on_front"]
        fig, ax = plt.subplots(figsize=(8, 6))
        variants = points.index.get_level_values(0) if axes else points.index
        for variant in dict.fromkeys(variants):
            mine = points[variants == variant]
            ax.scatter(mine[other], mine[diversity], label=variant, s=25)
        on_front = points[front].sort_values(other)
        ax.plot(on_front[other], on_front[diversity], color="black", linewidth=1, label="Pareto front")
        ax.scatter(on_front[other], on_front[diversity], s=120, facecolors="none", edgecolors="black")
        if floor is not None and floor[0] == other and floor[1] is not None:
            ax.axvline(floor[1], linestyle="--", color="gray", label=f"floor {floor[1]:.3g}")
        ax.set(xlabel=f"{other} (higher: more adherent)", ylabel=f"{diversity} (higher: more varied)")
        ax.set_title(f"{diversity} vs {other}: one point per setting (mean), the front circled", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        # Labels come after the layout, which would otherwise shrink the axes to fit the longest one.
        for cell, row in points.iterrows():
            text = label(cell) if label is not None else setting_label(axes, cell)
            ax.annotate(text, (row[other], row[diversity]), fontsize=6, alpha=0.8, annotation_clip=False)
        path = out / f"pareto-{_file_part(diversity)}-vs-{_file_part(other)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        figures.append((f"Pareto front: {diversity} vs {other}", path))
    return figures


def setting_label(axes: Sequence[str], cell: object) -> str:
    """``variant a=1 b=2`` for a summary cell, leaving out axes the variant's method ignores."""
    parts = cell if isinstance(cell, tuple) else (cell,)
    settings = [f"{a}={v}" for a, v in zip(axes, parts[1:], strict=True) if _none_if_nan(v) is not None]
    return " ".join([str(parts[0]), *settings])


def _grids(run: RunData, run_dir: Path, out: Path) -> list[tuple[str, Path]]:
    """Per prompt: rows = variant and grid point, columns = seeds, so each column shares its initial noise."""
    figures = []
    images = run.images
    seeds = sorted(images["seed"].unique())[:_GRID_MAX_SEEDS]
    for prompt_number, prompt in enumerate(list(dict.fromkeys(images["prompt"]))[:_GRID_MAX_PROMPTS]):
        subset = images[(images["prompt"] == prompt) & images["seed"].isin(seeds)]
        rows, labels = [], []
        for label, row in subset.groupby(["variant", *run.axes], sort=False, dropna=False):
            by_seed = dict(zip(row["seed"], row["path"], strict=True))
            if not all(seed in by_seed for seed in seeds):
                continue  # a row with holes would misalign the shared-noise columns
            rows.append([_thumbnail(run_dir / by_seed[seed]) for seed in seeds])
            # An axis the variant's method ignores (gamma for plain LoRA) is left out of its label.
            labels.append(setting_label(run.axes, label))
            if len(rows) == _GRID_MAX_ROWS:
                break
        if rows:
            path = out / f"grid-p{prompt_number:03d}.png"
            make_grid(rows, labels, [f"seed {s}" for s in seeds]).save(path)
            figures.append((f"Same-noise grid: {prompt}", path))
    return figures


def _thumbnail(path: Path) -> Image.Image:
    """The image at about ``_THUMBNAIL_PX``: large ones shrunk, small ones enlarged by a whole factor
    without smoothing (NEAREST), so each pixel of a 32 px image stays a crisp square."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    factor = _THUMBNAIL_PX // max(image.size)
    if factor > 1:
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    image.thumbnail((_THUMBNAIL_PX, _THUMBNAIL_PX))
    return image


def _file_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


# --- Documents --------------------------------------------------------------------------------


def _markdown(
    run: RunData, table: pd.DataFrame, figures: list[tuple[str, Path]], summary: pd.DataFrame
) -> str:
    lines = [f"# {run.name}", "", _caption(run), ""]
    lines += [markdown_table(table), ""] if not table.empty else ["No metrics computed.", ""]
    for (diversity, other), points in pareto_fronts(summary, run.axes).items():
        front = points[points["on_front"]].sort_values(other, ascending=False)
        rows = pd.DataFrame(
            {
                "setting": [setting_label(run.axes, cell) for cell in front.index],
                other: front[other].round(3),
                diversity: front[diversity].round(3),
            }
        )
        lines += [f"## Pareto front: {diversity} vs {other} (means)", "", markdown_table(rows), ""]
    for title, path in figures:
        lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    return "\n".join(lines)


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_display(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _display(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value)


def _html(run: RunData, table: pd.DataFrame, figures: list[tuple[str, Path]]) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(run.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
        f"</head><body><h1>{html.escape(run.name)}</h1><p>{html.escape(_caption(run))}</p>",
        table.to_html(index=False, na_rep="—", escape=True)
        if not table.empty
        else "<p>No metrics computed.</p>",
    ]
    for title, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _caption(run: RunData) -> str:
    return (
        f"{len(run.images)} images; variants: {', '.join(run.variants)}; swept: {', '.join(run.axes) or 'nothing'}."
        f" Cells: mean [95% interval], a percentile bootstrap of the mean ({BOOTSTRAP_RESAMPLES} resamples,"
        f" seed {BOOTSTRAP_SEED}) over groups, or over images when a cell holds one group; it stays within the values'"
        " range, so bounded scores keep their bounds, and it is narrow when there are few values."
    )


def _write(path: Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _export(run: RunData, summary: pd.DataFrame, out: Path, fmt: ExportFormat) -> list[Path]:
    """The index joined with per-image metrics, the per-group metrics and the summary, as CSV or Parquet."""
    images = run.images.drop(columns=["params"])
    if not run.per_image.empty:
        images = images.merge(run.per_image, on="key", how="left", suffixes=("", "_metric"))
    files = []
    for name, frame in (("images", images), ("groups", run.per_group), ("summary", summary)):
        path = out / f"{name}.{fmt}"
        frame = frame.map(_scalar) if not frame.empty else frame
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        files.append(path)
    return files


def _scalar(value: object) -> object:
    # Lists and dicts (loras, interval) become JSON text: both formats need flat columns.
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, tuple, dict)) else value
