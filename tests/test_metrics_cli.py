import json

import pandas as pd
import pytest
import torch
from fake_judge import FakeServer, chat
from PIL import Image

from autolora.cli import main
from autolora.images import save_png
from autolora.metrics import register_extractor
from autolora.metrics.features import FeatureExtractor


@register_extractor("test:cli-colour")
class MeanColour(FeatureExtractor):
    """Mean RGB of each image."""

    def __call__(self, images):
        return torch.tensor(
            [[sum(c) / 16 for c in zip(*im.convert("RGB").getdata(), strict=True)] for im in images]
        )


@pytest.fixture
def generated(tmp_path):
    folder = tmp_path / "generated"
    for i in range(6):
        params = {"prompt": "a cat" if i < 3 else "a dog", "seed": i}
        save_png(Image.new("RGB", (4, 4), (40 * i, 255 - 40 * i, 7 * i)), folder / f"{i:03d}.png", params)
    return folder


def test_eval_writes_per_image_and_per_group_results_and_prints_the_group_means(generated, tmp_path, capsys):
    out = tmp_path / "results.csv"
    argv = ["eval", str(generated), "--metrics", "diversity,vendi", "--extractor", "test:cli-colour"]
    status = main([*argv, "--out", str(out), "--cache", str(tmp_path / "cache"), "--option", "vendi.q=2"])
    assert status == 0
    per_image, per_group = pd.read_csv(out), pd.read_csv(tmp_path / "results.groups.csv")
    assert per_image["path"].tolist() == [str(generated / f"{i:03d}.png") for i in range(6)]
    assert per_group[["prompt", "n"]].values.tolist() == [["a cat", 3], ["a dog", 3]]
    assert per_group["diversity"].between(0, 2).all()
    config = json.loads((tmp_path / "results.config.json").read_text())
    assert config["metrics"]["vendi"] == {"extractor": "test:cli-colour", "q": 2.0}
    printed = capsys.readouterr().out
    assert "a cat" in printed and "diversity" in printed and "results.groups.csv" in printed


def test_eval_groups_other_images_by_a_metadata_file(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(folder / f"{i}.jpg")
    metadata = tmp_path / "meta.csv"
    metadata.write_text("file,style\n0.jpg,ink\n1.jpg,ink\n2.jpg,oil\n3.jpg,oil\n")
    out = tmp_path / "results.parquet"
    argv = [
        "eval",
        str(folder),
        "--metrics",
        "diversity",
        "--extractor",
        "test:cli-colour",
        "--group-by",
        "style",
    ]
    assert main([*argv, "--metadata", str(metadata), "--out", str(out)]) == 0
    assert pd.read_parquet(tmp_path / "results.groups.parquet")["style"].tolist() == ["ink", "oil"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "nope"], "unknown metric 'nope'"),
        (["--metrics", "diversity", "--group-by", "seed,style"], "has no style to group by"),
        (["--metrics", "diversity", "--option", "diversity=3"], "METRIC.KEY=VALUE"),
        (["--metrics", "kid", "--extractor", "test:cli-colour"], "needs reference images"),
    ],
)
def test_eval_mistakes_are_one_line_errors_with_exit_status_2(generated, tmp_path, capsys, extra, message):
    assert main(["eval", str(generated), "--out", str(tmp_path / "r.csv"), *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_eval_div_cps_multiplies_diversity_by_the_mean_of_parsed_judge_scores(
    generated, tmp_path, monkeypatch
):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    replies = ['{"score": 4, "reason": []}', "no idea", '{"score": 2, "reason": []}'] * 2
    server = FakeServer(lambda body: chat(replies.pop(0)))
    out = tmp_path / "results.csv"
    argv = [
        "eval",
        str(generated),
        "--metrics",
        "div_cps",
        "--extractor",
        "test:cli-colour",
        "--out",
        str(out),
    ]
    judge = ["--judge-url", server.url, "--judge-model", "vlm", "--character", "Anna"]
    try:
        assert (
            main(
                [*argv, *judge, "--option", "judge:cps.concurrency=1", "--option", "judge:cps.max_retries=0"]
            )
            == 0
        )
    finally:
        server.close()
    per_image, per_group = pd.read_csv(out), pd.read_csv(tmp_path / "results.groups.csv")
    assert per_image["cps"].isna().tolist() == [False, True, False] * 2
    assert per_group["cps"].tolist() == [3.0, 3.0]  # the unparsed reply is left out, not scored 0
    assert per_group["cps_n_failed"].tolist() == [1, 1]
    assert per_group["div_cps"].tolist() == pytest.approx((per_group["diversity"] * 3.0).tolist())


def test_eval_compares_groups_with_a_reference_folder(generated, tmp_path):
    reference = tmp_path / "training"
    reference.mkdir()
    for i in range(4):
        Image.new("RGB", (4, 4), (0, 30 * i, 200)).save(reference / f"{i}.png")
    out = tmp_path / "results.csv"
    argv = ["eval", str(generated), "--metrics", "fd_dinov2,kid", "--extractor", "test:cli-colour"]
    assert main([*argv, "--reference", str(reference), "--option", "kid.subsets=4", "--out", str(out)]) == 0
    per_group = pd.read_csv(tmp_path / "results.groups.csv")
    assert (per_group["fd_dinov2"] > 0).all()
    assert per_group["kid"].notna().all()
    assert json.loads((tmp_path / "results.config.json").read_text())["n_reference"] == 4


def test_wrong_results_suffix_is_refused_before_any_metric_is_computed(
    generated, tmp_path, capsys, monkeypatch
):
    import autolora.metrics

    def fail(*args, **kwargs):
        raise AssertionError("metrics were computed before --out was checked")

    monkeypatch.setattr(autolora.metrics, "evaluate", fail)
    argv = ["eval", str(generated), "--metrics", "diversity", "--extractor", "test:cli-colour"]
    assert main([*argv, "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .csv or .parquet" in capsys.readouterr().err
