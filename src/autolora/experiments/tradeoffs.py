"""The trade-off map over every world LoRA: one ``mini-tradeoffs`` sweep per LoRA, then pooled fronts.

``run_map(out)`` runs the ``mini-tradeoffs`` preset once per world style LoRA (each a resumable sweep
in ``out/<lora>``, the prompts' style word and the style score set to that LoRA's), and
``map_report(out)`` reads them back: per-LoRA and pooled Pareto fronts of diversity against style and
digit scores, and the answer to "at matched style adherence, is AutoLoRA's front more varied than
LoRA+CFG's and the baselines'?" as paired differences over LoRAs with 95% intervals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from autolora.errors import InputFileError
from autolora.experiments.config import SweepConfig, load_config

PRESET = "mini-tradeoffs"
#: The prompts' digits, as in the preset; the style word is the LoRA's trigger.
DIGITS = ("two", "five", "seven")
#: The world LoRAs the map covers: every style LoRA (the character LoRA has no prompted digit) and the
#: shipped training-length checkpoints of ``shadow``.
MAP_LORAS = (
    "chalk",
    "checker",
    "italic",
    "neon",
    "outline",
    "shadow",
    "stripes",
    "shadow-125steps",
    "shadow-1500steps",
    "shadow-4000steps",
)


def lora_overrides(name: str) -> list[str]:
    """``--set`` overrides that point the ``mini-tradeoffs`` preset at the world LoRA ``name``."""
    from autolora.world.assets import lora_info

    info = lora_info(name)
    prompts = [f"a {digit} in {info.trigger} style" for digit in DIGITS]
    return [
        f"loras.0.source=world:{name}",
        f"prompts={json.dumps(prompts)}",
        f"metrics.options.world:style.style={info.style}",
    ]


def lora_config(name: str, overrides: Sequence[str] = ()) -> SweepConfig:
    """The ``mini-tradeoffs`` sweep of the world LoRA ``name``, with further ``overrides`` applied."""
    return load_config(PRESET, [*lora_overrides(name), *overrides])


def run_map(
    out: str | Path, loras: Sequence[str] = MAP_LORAS, overrides: Sequence[str] = (), progress: bool = True
) -> list[Path]:
    """Run (or resume) the map's sweep of every LoRA in ``loras`` into ``out/<lora>``; returns the folders."""
    from autolora.experiments.runner import run_sweep

    out = Path(out)
    configs = {name: lora_config(name, overrides) for name in loras}  # every LoRA checked before any work
    folders = []
    for name, config in configs.items():
        run_sweep(config, out / name, progress=progress)
        folders.append(out / name)
    return folders


def load_summaries(out: str | Path, loras: Sequence[str]) -> pd.DataFrame:
    """The report summaries (one row per setting and metric) of every LoRA's run, with a ``lora`` column."""
    from autolora.experiments.report import load_run, summarize

    frames = [summarize(load_run(Path(out) / name)).assign(lora=name) for name in loras]
    return pd.concat(frames, ignore_index=True)


#: Method families compared on the map, by the preset's variant names.
FAMILIES = {
    "AutoLoRA": ("AutoLoRA", "AutoLoRA-early", "AutoLoRA-ramp"),
    "LoRA+CFG": ("LoRA+CFG",),
    "interval CFG": ("interval-CFG",),
    "CADS": ("CADS",),
}
#: Adherence levels at which the families' fronts are compared.
LEVELS = (0.25, 0.5, 0.75, 0.9)
DIVERSITY, STYLE, DIGIT = "diversity", "style_score", "digit_score"
_SUMMARY_COLUMNS = ("metric", "mean", "ci_low", "ci_high", "n", "over")


def _axes(summary: pd.DataFrame) -> list[str]:
    """The swept settings' columns of a (per-LoRA or pooled) summary."""
    return [c for c in summary.columns if c not in (*_SUMMARY_COLUMNS, "lora", "variant")]


def setting_means(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (lora, setting): the setting's values, and the mean of each metric; ``setting`` labels
    the variant and its values."""
    from autolora.experiments.report import setting_label

    axes = _axes(summary)
    cells = summary[["variant", *axes]].itertuples(index=False, name=None)
    frame = summary.assign(setting=[setting_label(axes, cell) for cell in cells])
    means = frame.pivot_table(index=["lora", "setting"], columns="metric", values="mean", sort=False)
    values = frame.drop_duplicates(["lora", "setting"])[["lora", "variant", "setting", *axes]]
    return values.merge(means.reset_index(), on=["lora", "setting"])


def best_at_level(
    means: pd.DataFrame,
    variants: Sequence[str],
    adherence: str,
    level: float,
    digit_floor: pd.Series | None = None,
) -> pd.Series:
    """Per LoRA: the highest mean diversity among ``variants``' settings whose mean ``adherence`` is at
    least ``level`` (and, with ``digit_floor``, whose digit score reaches that LoRA's floor); NaN where
    none does. It is the height of that family's front at that adherence."""
    eligible = means["variant"].isin(variants) & (means[adherence] >= level)
    if digit_floor is not None:
        eligible &= means[DIGIT] >= means["lora"].map(digit_floor)
    return means[eligible].groupby("lora")[DIVERSITY].max().reindex(means["lora"].unique())


def lora_cfg_default(means: pd.DataFrame) -> pd.DataFrame:
    """The rows of LoRA+CFG at the world's CFG scale and LoRA scale 1: what a user runs today."""
    from autolora.world.assets import WORLD_CFG

    # A value the sweep does not vary is not a column; a setting that leaves it out runs the default.
    cfg = _values(means, "cfg", WORLD_CFG)
    return means[
        (means["variant"] == "LoRA+CFG") & (cfg == WORLD_CFG) & (_values(means, "lora_scale", 1.0) == 1.0)
    ]


def _values(means: pd.DataFrame, axis: str, default: float) -> pd.Series:
    return means[axis].fillna(default) if axis in means else pd.Series(default, index=means.index)


def default_digit_floor(means: pd.DataFrame, ratio: float = 0.9) -> pd.Series:
    """Per LoRA: ``ratio`` times the digit score of ``lora_cfg_default``, so that a setting cannot buy
    diversity with illegible digits."""
    return lora_cfg_default(means).set_index("lora")[DIGIT] * ratio


def front_gaps(
    means: pd.DataFrame,
    adherence: str = STYLE,
    levels: Sequence[float] = LEVELS,
    digit_floor: pd.Series | None = None,
) -> pd.DataFrame:
    """AutoLoRA's front against LoRA+CFG's and against the best other method, at matched ``adherence``.

    For each level: the mean over LoRAs of the paired difference in front height (AutoLoRA minus the
    other; ``best_at_level``), its 95% bootstrap interval over LoRAs, and how many LoRAs both fronts reach.
    """
    from autolora.stats import mean_ci95

    rows = []
    others = [v for family, names in FAMILIES.items() if family != "AutoLoRA" for v in names]
    for level in levels:
        auto = best_at_level(means, FAMILIES["AutoLoRA"], adherence, level, digit_floor)
        for against, variants in (("LoRA+CFG", FAMILIES["LoRA+CFG"]), ("best other method", others)):
            gap = (auto - best_at_level(means, variants, adherence, level, digit_floor)).dropna()
            mean, low, high = mean_ci95(gap.to_numpy())
            rows.append(
                {
                    "adherence": adherence,
                    "level": level,
                    "digit floor": "none" if digit_floor is None else "0.9 x LoRA+CFG's",
                    "AutoLoRA against": against,
                    "gap": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "loras": len(gap),
                    "AutoLoRA ahead in": int((gap > 0).sum()),
                }
            )
    return pd.DataFrame(rows)


def pooled_summary(summary: pd.DataFrame, loras: Sequence[str]) -> pd.DataFrame:
    """Each setting's metrics averaged over ``loras`` (the mean of per-LoRA means), with 95% intervals
    over LoRAs, in the report summary's layout so the report's Pareto functions read it."""
    from autolora.stats import mean_ci95

    frame = summary[summary["lora"].isin(loras)]
    keys = ["variant", *_axes(frame), "metric"]
    rows = []
    for cell, group in frame.groupby(keys, dropna=False, sort=False):
        mean, low, high = mean_ci95(group["mean"].to_numpy())
        rows.append(
            {
                **dict(zip(keys, cell, strict=True)),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n": len(group),
                "over": "LoRAs",
            }
        )
    return pd.DataFrame(rows)


#: The LoRAs pooled into the map's answer: every style LoRA as shipped (the checkpoints are one of them again).
POOLED_LORAS = MAP_LORAS[:7]
#: The training-length axis: checkpoints of one run of the ``shadow`` LoRA, by step count.
CHECKPOINTS = {125: "shadow-125steps", 500: "shadow", 1500: "shadow-1500steps", 4000: "shadow-4000steps"}


def map_report(out: str | Path) -> list[Path]:
    """Write ``out/report``: the pooled fronts, AutoLoRA's front against the others' at matched adherence,
    the training-length axis and every LoRA's front, from the runs present in ``out``."""
    from autolora.experiments.report import markdown_table, pareto_plots
    from autolora.images import atomic_write_bytes

    out = Path(out)
    present = [name for name in MAP_LORAS if (out / name / "sweep.json").exists()]
    if not present:
        raise InputFileError(f"{str(out)!r} holds no run of the map yet; run autolora tradeoffs first")
    summary = load_summaries(out, present)
    means = setting_means(summary)
    report = out / "report"
    report.mkdir(exist_ok=True)
    pooled_names = [name for name in POOLED_LORAS if name in present]
    pooled = pooled_summary(summary, pooled_names)
    axes = _axes(pooled)
    figures = pareto_plots(pooled, axes, report)
    pooled_means = means[means["lora"].isin(pooled_names)]
    floor = default_digit_floor(pooled_means)
    figures.append(("Each method's front, pooled", _family_plot(pooled_means, report)))
    gaps = pd.concat(
        [
            front_gaps(pooled_means, STYLE),
            front_gaps(pooled_means, STYLE, digit_floor=floor),
            front_gaps(pooled_means, DIGIT),
        ]
    )
    lines = [
        "# The trade-off map",
        "",
        f"LoRAs: {', '.join(present)}; pooled over {', '.join(pooled_names)}. Means over each LoRA's prompts"
        " and seeds; pooled cells are the mean over LoRAs with a 95% percentile-bootstrap interval over LoRAs.",
        "",
        "## AutoLoRA's front against the others' at matched adherence",
        "",
        "Gap: the most varied AutoLoRA setting whose mean adherence reaches the level, minus the most varied"
        " setting of the other method(s) that reaches it, per LoRA, averaged over the LoRAs both reach.",
        "",
        markdown_table(_rounded(gaps)),
        "",
        "## Pooled settings",
        "",
        markdown_table(_pooled_table(pooled, axes)),
        "",
        "## Training length (checkpoints of one shadow LoRA run)",
        "",
        markdown_table(_rounded(_checkpoint_table(means))),
        "",
    ]
    for name in present:
        mine = means[means["lora"] == name]
        front = _style_front(mine)
        lines += [f"## {name}: the diversity vs style front", "", markdown_table(_rounded(front)), ""]
    lines += [f"## {title}\n\n![{title}]({path.name})\n" for title, path in figures]
    files = [path for _, path in figures]
    for name, frame in (("means.csv", means), ("gaps.csv", gaps), ("pooled.csv", pooled)):
        frame.to_csv(report / name, index=False)
        files.append(report / name)
    atomic_write_bytes(report / "tradeoffs.md", "\n".join(lines).encode("utf-8"))
    return [report / "tradeoffs.md", *files]


def _style_front(means: pd.DataFrame) -> pd.DataFrame:
    from autolora.pareto import pareto_mask

    points = means[[STYLE, DIVERSITY]].to_numpy().tolist()
    front = means[pareto_mask(points)].sort_values(STYLE, ascending=False)
    return front[["setting", STYLE, DIVERSITY, DIGIT]]


def _pooled_table(pooled: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    from autolora.experiments.report import setting_label

    cells = pooled.assign(
        setting=[
            setting_label(axes, c) for c in pooled[["variant", *axes]].itertuples(index=False, name=None)
        ],
        text=[_interval_text(*row) for row in pooled[["mean", "ci_low", "ci_high"]].to_numpy()],
    )
    table = cells.pivot_table(index="setting", columns="metric", values="text", aggfunc="first", sort=False)
    return table.reset_index()


def _checkpoint_table(means: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint of the shadow run: LoRA+CFG as users run it, and AutoLoRA's front height minus
    LoRA+CFG's (digit floor applied) at two style levels."""
    rows = []
    for steps, name in CHECKPOINTS.items():
        mine = means[means["lora"] == name]
        if mine.empty:
            continue
        default, floor = lora_cfg_default(mine).iloc[0], default_digit_floor(mine)
        row = {"steps": steps, "LoRA": name}
        row |= {f"LoRA+CFG default {metric}": default[metric] for metric in (STYLE, DIVERSITY, DIGIT)}
        for level in (0.5, 0.75):
            auto = best_at_level(mine, FAMILIES["AutoLoRA"], STYLE, level, floor)
            lora = best_at_level(mine, FAMILIES["LoRA+CFG"], STYLE, level, floor)
            row[f"AutoLoRA - LoRA+CFG front, style >= {level}"] = (auto - lora).iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def _family_plot(means: pd.DataFrame, report: Path) -> Path:
    """Each family's front height (mean over LoRAs) against the style level it must reach; on the right
    only settings whose digit score reaches ``default_digit_floor`` count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = np.linspace(0.0, 1.0, 41)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, floor, title in (
        (axes[0], None, "every setting"),
        (axes[1], default_digit_floor(means), "digit score >= 0.9 x LoRA+CFG's at the default"),
    ):
        for family, variants in FAMILIES.items():
            heights = [best_at_level(means, variants, STYLE, level, floor).mean() for level in levels]
            ax.step(levels, heights, where="post", label=family)
        ax.set(xlabel="style score the setting must reach (mean)", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("diversity of the most varied such setting")
    axes[0].legend()
    fig.suptitle(
        "Each method's front, mean over LoRAs (a LoRA a front cannot reach is left out)", fontsize=11
    )
    fig.tight_layout()
    path = report / "fronts-by-method.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _interval_text(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(3)
