import re

import pandas as pd
import pytest
from test_experiments_runner import sweep_of, tiny  # noqa: F401 (tiny is a fixture)

from autolora.cli import main
from autolora.errors import ConfigError, InputFileError
from autolora.experiments.config import parse_config
from autolora.experiments.index import RunIndex
from autolora.experiments.report import RunData, build_report, load_run, paper_table, summarize
from autolora.experiments.runner import run_sweep


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):  # noqa: F811
    """A finished sweep with an image-level metric (brightness) and a group-level one (spread)."""
    tmp_path = tmp_path_factory.mktemp("run")
    config = parse_config(sweep_of(tiny))
    run_sweep(config, tmp_path, progress=False)
    with RunIndex(tmp_path) as index:
        images = index.images()
    per_image = [{"key": key, "brightness": float(i % 7)} for i, key in enumerate(images["key"])]
    per_group = []
    for item in config.work_items():
        if item.seed == 0:
            group = {"variant": item.variant, "lora_scale": item.params["lora_scale"], "prompt": item.prompt}
            per_group.append({**group, "spread": item.params["lora_scale"] + item.prompt_index / 10})
    with RunIndex(tmp_path) as index:
        index.store_metrics("test", per_image, per_group)
    return tmp_path


def test_summary_holds_the_means_of_the_index_numbers(run_dir):
    run = load_run(run_dir)
    summary = summarize(run)
    images = run.images.merge(run.per_image, on="key")
    for (variant, scale), cell in images.groupby(["variant", "lora_scale"]):
        row = summary[
            (summary.metric == "brightness") & (summary.variant == variant) & (summary.lora_scale == scale)
        ]
        assert row["mean"].item() == pytest.approx(cell["brightness"].mean())
        assert row["n"].item() == 2  # two prompt groups per cell: the interval is over groups
    spread = summary[summary.metric == "spread"]
    assert len(spread) == 4
    assert spread["mean"].tolist() == pytest.approx([0.55, 1.05] * 2)
    assert set(spread["over"]) == {"groups"}


def test_image_level_interval_is_over_seeds_when_a_cell_has_one_group(run_dir):
    run = load_run(run_dir)
    one_prompt = run.per_group[run.per_group.prompt == "a photo of cat"]
    run.per_group = one_prompt.drop(columns=["prompt"])
    run.per_image = run.per_image[
        run.per_image.key.isin(run.images.key[run.images.prompt == "a photo of cat"])
    ]
    summary = summarize(run)
    brightness = summary[summary.metric == "brightness"]
    assert set(brightness["over"]) == {"images"} and set(brightness["n"]) == {3}


def test_report_files_hold_the_summary_numbers(run_dir):
    report = build_report(run_dir, ["md", "html"], ["csv", "parquet"])
    names = {p.name for p in report.files}
    assert {"report.md", "report.html", "images.csv", "groups.parquet", "summary.csv"} <= names
    assert "plot-brightness-vs-lora_scale.png" in names and "grid-p000.png" in names
    markdown = (run_dir / "report" / "report.md").read_text()
    for row in report.summary.itertuples():
        assert f"{row.mean:.3f}" in markdown
    assert "| lora_scale | LoRA+CFG spread | LoRA+CFG brightness | AutoLoRA+CFG spread |" in markdown
    exported = pd.read_csv(run_dir / "report" / "images.csv")
    assert len(exported) == 24 and exported["brightness"].notna().all()
    assert pd.read_parquet(run_dir / "report" / "summary.parquet")["mean"].tolist() == pytest.approx(
        report.summary["mean"].tolist()
    )


def test_html_report_embeds_every_figure(run_dir):
    build_report(run_dir, ["html"])
    page = (run_dir / "report" / "report.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_report_cli_and_its_errors(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--format", "md"]) == 0
    assert "report.md" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--export", "xlsx"]) == 2
    assert "unknown export format 'xlsx'" in capsys.readouterr().err
    with pytest.raises(InputFileError, match="not a run folder"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown report format 'pdf'"):
        build_report(run_dir, ["pdf"])


def test_a_variant_that_ignores_the_swept_axis_gets_its_own_row():
    groups = [
        {"variant": "CFG", "gamma": None, "prompt": "a", "diversity": 0.2},
        {"variant": "CFG", "gamma": None, "prompt": "b", "diversity": 0.4},
        {"variant": "AutoLoRA", "gamma": 1.5, "prompt": "a", "diversity": 0.5},
        {"variant": "AutoLoRA", "gamma": 1.5, "prompt": "b", "diversity": 0.7},
    ]
    run = RunData(
        name="t",
        axes=["gamma"],
        group_by=["variant", "gamma", "prompt"],
        variants=["CFG", "AutoLoRA"],
        images=pd.DataFrame(columns=["key", "variant", "gamma", "prompt", "seed"]),
        per_image=pd.DataFrame(),
        per_group=pd.DataFrame(groups),
        metric_names=["diversity"],
    )
    table = paper_table(run, summarize(run))
    assert table.columns.tolist() == ["gamma", "CFG diversity", "AutoLoRA diversity"]
    assert table["gamma"].tolist() == [1.5, "—"]
    assert table["CFG diversity"].iloc[1] == "0.300 [0.200, 0.400]"
    assert table["AutoLoRA diversity"].iloc[0] == "0.600 [0.500, 0.700]"


def test_small_images_are_enlarged_without_smoothing(tmp_path):
    from PIL import Image

    from autolora.experiments.report import _thumbnail

    pixels = Image.new("RGB", (32, 32), "black")
    pixels.putpixel((1, 1), (255, 0, 0))
    pixels.save(tmp_path / "small.png")
    big = _thumbnail(tmp_path / "small.png")
    assert big.size == (192, 192)  # a whole factor of 6
    # Pixel (1, 1) becomes a pure red 6 x 6 square; its neighbours stay pure black.
    assert {big.getpixel((x, y)) for x in range(6, 12) for y in range(6, 12)} == {(255, 0, 0)}
    assert big.getpixel((5, 5)) == big.getpixel((12, 12)) == (0, 0, 0)


def test_pareto_plot_marks_the_front_and_labels_every_setting(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from autolora.experiments import report

    rows = []
    # (variant, cfg) -> (style, diversity): A@1 and B@2 are on the front, A@2 is dominated by B@2.
    for variant, cfg, style, diversity in [("A", 1.0, 0.9, 0.1), ("A", 2.0, 0.5, 0.2), ("B", 2.0, 0.6, 0.3)]:
        rows.append({"variant": variant, "cfg": cfg, "metric": "style_score", "mean": style})
        rows.append({"variant": variant, "cfg": cfg, "metric": "diversity", "mean": diversity})
    summary = pd.DataFrame(rows)
    labels, lines = [], []
    annotate, plot = Axes.annotate, Axes.plot
    monkeypatch.setattr(
        Axes, "annotate", lambda ax, text, *a, **k: labels.append(text) or annotate(ax, text, *a, **k)
    )
    monkeypatch.setattr(
        Axes, "plot", lambda ax, x, y, *a, **k: lines.append(list(x)) or plot(ax, x, y, *a, **k)
    )
    figures = report.pareto_plots(summary, ["cfg"], tmp_path)
    assert [title for title, _ in figures] == ["Pareto front: diversity vs style_score"]
    assert figures[0][1].is_file()
    assert sorted(labels) == ["A cfg=1.0", "A cfg=2.0", "B cfg=2.0"]
    assert lines == [[0.6, 0.9]]  # the front: B@2 then A@1, by style
    front = report.pareto_fronts(summary, ["cfg"])[("diversity", "style_score")]["on_front"]
    assert front.to_dict() == {("A", 1.0): True, ("A", 2.0): False, ("B", 2.0): True}


def test_pareto_mask_keeps_exactly_the_undominated_points():
    from autolora.pareto import pareto_mask

    points = [(0.9, 0.1), (0.5, 0.2), (0.6, 0.3), (0.6, 0.3), (float("nan"), 0.9)]
    assert pareto_mask(points) == [True, False, True, True, False]
