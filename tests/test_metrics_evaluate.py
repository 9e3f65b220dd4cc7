import json
import math

import pandas as pd
import pytest
import torch
from PIL import Image

from autolora.errors import ConfigError, InputFileError
from autolora.images import save_png
from autolora.metrics import ImageRecord, Metric, evaluate, load_records, register_extractor, register_metric
from autolora.metrics.features import FeatureExtractor
from autolora.metrics.products import DiversityProduct


@register_extractor("test:pixels")
class CountingPixels(FeatureExtractor):
    """The image's pixels as features; counts how many images it was asked for."""

    calls: list[int] = []  # noqa: RUF012  (shared by every instance on purpose)

    def __call__(self, images):
        self.calls.append(len(images))
        return torch.stack(
            [torch.tensor(list(im.convert("RGB").getdata()), dtype=torch.float32).flatten() for im in images]
        )


@register_metric("test:brightness")
class Brightness(Metric):
    """Mean pixel value of each image (NaN where the metadata says ``fail``), a status and a label;
    counts the images it computes."""

    level = "image"
    computed: list[int] = []  # noqa: RUF012

    def compute(self, records, *, reference=None, inputs=None):
        self.computed.append(len(records))
        return [
            {
                "brightness": math.nan if r.meta.get("fail") else sum(r.image.convert("L").getdata()) / 4,
                "status": "x",
                "label": 1,
            }
            for r in records
        ]


@register_metric("test:div-brightness")
class DivBrightness(DiversityProduct):
    requires = ("diversity", "test:brightness")
    judge, score = "test:brightness", "brightness"


def record(value: int, prompt: str, **meta) -> ImageRecord:
    pixels = [
        (value, (value * 7) % 256, (value * 13) % 256),
        (255 - value, value // 2, 3),
        (1, 2, value),
        (9, 9, 9),
    ]
    image = Image.new("RGB", (2, 2))
    image.putdata(pixels)
    return ImageRecord(image, {"prompt": prompt, **meta})


@pytest.fixture
def records() -> list[ImageRecord]:
    return [record(v, "a cat" if v < 100 else "a dog") for v in (10, 40, 70, 130, 160, 190, 220)]


@pytest.fixture(autouse=True)
def reset_counters():
    CountingPixels.calls.clear()
    Brightness.computed.clear()


PIXELS = {"extractor": "test:pixels"}


def test_groups_get_their_size_and_metrics_and_images_keep_their_hash(records):
    result = evaluate(records, ["diversity", "vendi"], options={"diversity": PIXELS, "vendi": PIXELS})
    assert list(result.per_group.columns) == ["prompt", "n", "diversity", "vendi"]
    assert result.per_group["prompt"].tolist() == ["a cat", "a dog"]
    assert result.per_group["n"].tolist() == [3, 4]
    assert result.per_image["sha256"].tolist() == [r.sha256 for r in records]
    assert list(result.per_image.columns) == ["sha256", "path", "prompt"]


def test_metrics_sharing_an_extractor_compute_each_feature_once(records):
    evaluate(records, ["diversity", "vendi"], options={"diversity": PIXELS, "vendi": PIXELS})
    assert sum(CountingPixels.calls) == len(records)


def test_second_evaluation_with_a_cache_dir_computes_nothing_new(records, tmp_path):
    metrics, options = ["diversity", "test:brightness"], {"diversity": PIXELS}
    first = evaluate(records, metrics, cache_dir=tmp_path, options=options)
    assert (sum(CountingPixels.calls), sum(Brightness.computed)) == (len(records), len(records))
    second = evaluate(records, metrics, cache_dir=tmp_path, options=options)
    assert (sum(CountingPixels.calls), sum(Brightness.computed)) == (len(records), len(records))
    pd.testing.assert_frame_equal(first.per_group, second.per_group)
    pd.testing.assert_frame_equal(first.per_image, second.per_image)


def test_cache_keys_separate_extractor_options_and_prompts(records, tmp_path):
    evaluate(records, ["diversity", "test:brightness"], cache_dir=tmp_path, options={"diversity": PIXELS})
    renamed = [ImageRecord(r.image, {"prompt": "other"}) for r in records]
    evaluate(renamed, ["diversity", "test:brightness"], cache_dir=tmp_path, options={"diversity": PIXELS})
    assert sum(CountingPixels.calls) == len(records)  # features depend on pixels only
    assert sum(Brightness.computed) == 2 * len(records)  # image-level results may read the prompt


def test_failed_image_results_are_excluded_from_means_counted_and_retried(tmp_path):
    group = [record(10, "p"), record(20, "p", fail=True), record(30, "p")]
    result = evaluate(group, ["test:brightness"], cache_dir=tmp_path)
    [row] = result.per_group.to_dict("records")
    assert row["brightness"] == pytest.approx(result.per_image["brightness"].iloc[[0, 2]].mean())
    assert row["brightness_n_failed"] == 1
    assert set(row) == {"prompt", "n", "brightness", "brightness_n_failed"}  # no means of labels or statuses
    assert math.isnan(result.per_image["brightness"].iloc[1])
    evaluate(group, ["test:brightness"], cache_dir=tmp_path)
    assert Brightness.computed == [3, 1]


def test_products_pull_in_their_requirements_and_multiply_group_means(records):
    records[1].meta["fail"] = True
    result = evaluate(records, ["test:div-brightness"], options={"diversity": PIXELS})
    row = result.per_group.iloc[0]
    assert {"diversity", "brightness", "brightness_n_failed"} <= set(result.per_group.columns)
    assert row["brightness_n_failed"] == 1
    assert row["test:div-brightness"] == pytest.approx(row["diversity"] * row["brightness"])


def test_empty_group_by_makes_one_group(records):
    result = evaluate(records, ["diversity"], group_by=(), options={"diversity": PIXELS})
    assert result.per_group["n"].tolist() == [len(records)]


def test_group_by_several_keys(records):
    for i, r in enumerate(records):
        r.meta["method"] = "cfg" if i % 2 else "autolora"
    result = evaluate(records, ["diversity"], group_by=("method", "prompt"), options={"diversity": PIXELS})
    assert result.per_group[["method", "prompt", "n"]].values.tolist() == [
        ["autolora", "a cat", 2], ["cfg", "a cat", 1], ["cfg", "a dog", 2], ["autolora", "a dog", 2]
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("metrics", "kwargs", "message"),
    [
        (["nope"], {}, "unknown metric 'nope'"),
        ([], {}, "no metrics requested"),
        (["diversity"], {"group_by": ("seed",)}, "has no seed to group by"),
        (["diversity"], {"options": {"diversty": {}}}, "options given for unknown metrics: diversty"),
        (["diversity"], {"options": {"diversity": {"extractor": "nope"}}}, "unknown feature extractor"),
        (["kid"], {"options": {"kid": PIXELS}}, "needs reference images"),
    ],
)
def test_bad_requests_raise_config_errors(records, metrics, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(records, metrics, **kwargs)


def test_reference_metrics_compare_each_group_with_the_reference(records):
    options = {"fd_dinov2": PIXELS, "kid": {**PIXELS, "subsets": 3}}
    result = evaluate(records, ["fd_dinov2", "kid"], reference=records, options=options)
    assert result.per_group[["fd_dinov2", "kid", "kid_std"]].notna().all().all()
    assert sum(CountingPixels.calls) == len(records)  # the reference images are the same images


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_results_and_their_configuration_are_written_next_to_each_other(records, tmp_path, suffix):
    result = evaluate(records, ["diversity", "test:brightness"], options={"diversity": PIXELS})
    written = result.to_file(tmp_path / f"out{suffix}")
    assert [p.name for p in written] == [f"out{suffix}", f"out.groups{suffix}", "out.config.json"]
    read = pd.read_csv if suffix == ".csv" else pd.read_parquet
    assert read(written[0])["sha256"].tolist() == result.per_image["sha256"].tolist()
    assert read(written[1])["diversity"].tolist() == pytest.approx(result.per_group["diversity"].tolist())
    config = json.loads(written[2].read_text())
    assert config["metrics"]["diversity"] == {"extractor": "test:pixels"}
    assert config["extractors"]["diversity"] == "test:pixels:{}"


def test_runtime_options_such_as_api_keys_are_neither_recorded_nor_cached(records, tmp_path):
    options = {"test:brightness": {"api_key": "secret", "timeout": 5, "character": "anna"}}
    result = evaluate(records, ["test:brightness"], cache_dir=tmp_path, options=options)
    assert result.config["metrics"]["test:brightness"] == {"character": "anna"}
    assert all(b"secret" not in path.read_bytes() for path in tmp_path.iterdir())
    options["test:brightness"]["api_key"] = "another"
    evaluate(records, ["test:brightness"], cache_dir=tmp_path, options=options)
    assert sum(Brightness.computed) == len(records)


def test_results_file_must_be_csv_or_parquet(records, tmp_path):
    result = evaluate(records, ["test:brightness"])
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        result.to_file(tmp_path / "out.xlsx")


# --- load_records ----------------------------------------------------------------------------------


def test_load_records_reads_our_png_metadata_in_name_order(tmp_path):
    for i in (2, 0, 1):
        save_png(
            Image.new("RGB", (4, 4), (i * 50, 0, 0)), tmp_path / f"img{i}.png", {"prompt": f"p{i}", "seed": i}
        )
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = load_records(tmp_path)
    assert [r.path.name for r in loaded] == ["img0.png", "img1.png", "img2.png"]
    assert [r.meta for r in loaded] == [{"prompt": f"p{i}", "seed": i} for i in range(3)]
    assert loaded[1].image.getpixel((0, 0)) == (50, 0, 0)


def test_load_records_skips_comparison_grids(tmp_path):
    save_png(Image.new("RGB", (4, 4), "red"), tmp_path / "00000-lora-seed0.png", {"prompt": "p"})
    save_png(Image.new("RGB", (12, 4)), tmp_path / "00001-grid.png", {"prompt": "p", "grid": True})
    assert [r.path.name for r in load_records(tmp_path)] == ["00000-lora-seed0.png"]
    (tmp_path / "00000-lora-seed0.png").unlink()
    with pytest.raises(InputFileError, match="only comparison grids"):
        load_records(tmp_path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_load_records_reads_a_metadata_file_for_other_images(tmp_path, suffix):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.webp"):
        Image.new("RGB", (4, 4), "red").save(images / name)
    table = pd.DataFrame({"file": ["b.webp", "a.jpg"], "prompt": ["two", "one"], "seed": [2, 1]})
    metadata = tmp_path / f"meta{suffix}"
    if suffix == ".csv":
        table.to_csv(metadata, index=False)
    else:
        table.to_json(metadata, orient="records", lines=True)
    loaded = load_records(images, metadata)
    assert [(r.path.name, r.meta) for r in loaded] == [
        ("a.jpg", {"prompt": "one", "seed": 1}),
        ("b.webp", {"prompt": "two", "seed": 2}),
    ]


def test_metadata_file_fields_override_png_metadata(tmp_path):
    save_png(Image.new("RGB", (4, 4)), tmp_path / "x.png", {"prompt": "old", "seed": 3})
    metadata = tmp_path / "meta.csv"
    metadata.write_text("file,prompt\nx.png,new\n")
    assert load_records(tmp_path, metadata)[0].meta == {"prompt": "new", "seed": 3}


def test_load_records_errors_name_the_problem(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_records(tmp_path / "absent")
    with pytest.raises(InputFileError, match="no images"):
        load_records(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "meta.csv").write_text("name,prompt\na.png,x\n")
    with pytest.raises(InputFileError, match="no 'file' column"):
        load_records(tmp_path, tmp_path / "meta.csv")
    (tmp_path / "meta.csv").write_text("file,prompt\nb.png,x\n")
    with pytest.raises(InputFileError, match=r"not in the folder: b\.png"):
        load_records(tmp_path, tmp_path / "meta.csv")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputFileError, match="cannot read image"):
        load_records(tmp_path)
