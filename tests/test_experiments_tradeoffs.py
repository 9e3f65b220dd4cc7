import math

import pandas as pd
import pytest

from autolora.errors import ConfigError
from autolora.experiments import tradeoffs
from autolora.experiments.config import load_config
from autolora.world.assets import lora_info


def _means(rows):
    """A means frame: (lora, variant, style, diversity, digit) rows."""
    frame = pd.DataFrame(
        rows, columns=["lora", "variant", tradeoffs.STYLE, tradeoffs.DIVERSITY, tradeoffs.DIGIT]
    )
    return frame.assign(setting=[f"{v} #{i}" for i, v in enumerate(frame["variant"])])


def test_the_map_of_chalk_is_the_preset_and_other_loras_get_their_word_and_style():
    assert tradeoffs.lora_config("chalk").hash == load_config("mini-tradeoffs").hash
    neon = tradeoffs.lora_config("neon")
    assert neon.prompts == [f"a {d} in {lora_info('neon').trigger} style" for d in ("two", "five", "seven")]
    assert neon.metrics.options["world:style"]["style"] == "neon"
    assert [spec.source for spec in neon.loras] == ["world:neon"]
    checkpoint = tradeoffs.lora_config("shadow-4000steps")
    assert checkpoint.metrics.options["world:style"]["style"] == "shadow"


def test_an_unknown_lora_is_refused_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown world LoRA 'sepia'"):
        tradeoffs.run_map(tmp_path / "map", ["chalk", "sepia"])
    assert not (tmp_path / "map").exists()


def test_front_height_and_gaps_are_paired_over_loras():
    means = _means(
        [
            ("a", "LoRA+CFG", 0.9, 0.20, 0.5),
            ("a", "LoRA+CFG", 0.5, 0.40, 0.5),
            ("a", "AutoLoRA", 0.8, 0.30, 0.5),
            ("a", "CADS", 0.6, 0.50, 0.5),
            ("b", "LoRA+CFG", 0.8, 0.10, 0.5),
            ("b", "AutoLoRA-early", 0.9, 0.25, 0.5),
            ("b", "AutoLoRA", 0.3, 0.90, 0.5),
        ]
    )
    height = tradeoffs.best_at_level(means, tradeoffs.FAMILIES["LoRA+CFG"], tradeoffs.STYLE, 0.75)
    assert height.to_dict() == {"a": 0.20, "b": 0.10}
    auto = tradeoffs.best_at_level(means, tradeoffs.FAMILIES["AutoLoRA"], tradeoffs.STYLE, 0.95)
    assert auto.isna().all()
    gaps = tradeoffs.front_gaps(means, levels=(0.5, 0.75, 0.95)).set_index(["level", "AutoLoRA against"])
    # At 0.5: a: 0.30 - 0.40 (LoRA+CFG), 0.30 - 0.50 (CADS); b: 0.25 - 0.10 on both.
    assert gaps.loc[(0.5, "LoRA+CFG"), "gap"] == pytest.approx((-0.10 + 0.15) / 2)
    assert gaps.loc[(0.5, "best other method"), "gap"] == pytest.approx((-0.20 + 0.15) / 2)
    assert gaps.loc[(0.5, "LoRA+CFG"), "AutoLoRA ahead in"] == 1
    assert gaps.loc[(0.75, "LoRA+CFG"), "gap"] == pytest.approx((0.10 + 0.15) / 2)
    assert gaps.loc[(0.95, "LoRA+CFG"), "loras"] == 0 and math.isnan(gaps.loc[(0.95, "LoRA+CFG"), "gap"])


def test_pooled_cells_are_the_mean_over_loras_of_each_settings_mean():
    summary = pd.DataFrame(
        {
            "variant": ["LoRA+CFG"] * 4,
            "cfg": [4.0, 4.0, 4.0, 4.0],
            "metric": ["diversity", "diversity", "world:style", "world:style"],
            "mean": [0.2, 0.4, 1.0, 0.5],
            "ci_low": 0.0,
            "ci_high": 1.0,
            "n": 3,
            "over": "groups",
            "lora": ["a", "b", "a", "b"],
        }
    )
    pooled = tradeoffs.pooled_summary(summary, ["a", "b"]).set_index("metric")
    assert pooled.loc["diversity", "mean"] == pytest.approx(0.3)
    assert pooled.loc["world:style", "mean"] == pytest.approx(0.75)
    assert (pooled["n"] == 2).all() and (pooled["over"] == "LoRAs").all()
    assert tradeoffs.pooled_summary(summary, ["a"]).set_index("metric").loc["diversity", "mean"] == 0.2


def test_tradeoffs_command_maps_two_loras_and_writes_the_pooled_report(tmp_path, capsys):
    from autolora.cli import main

    variants = (
        'variants=[{name="LoRA+CFG", method="lora", grid={cfg=[1.0, 4.0]}},'
        ' {name="AutoLoRA", method="autolora", cfg=4.0, gamma=1.5}]'
    )
    small = [
        "--set",
        "seeds.count=2",
        "--set",
        "generate.num_inference_steps=2",
        "--set",
        variants,
        "--no-progress",
    ]
    out = tmp_path / "map"
    assert main(["tradeoffs", str(out), "--loras", "neon", "stripes", *small]) == 0
    report = out / "report" / "tradeoffs.md"
    assert str(report) in capsys.readouterr().out
    text = report.read_text()
    assert "LoRAs: neon, stripes; pooled over neon, stripes" in text
    means = pd.read_csv(out / "report" / "means.csv")
    assert set(means["lora"]) == {"neon", "stripes"} and len(means) == 2 * 3
    assert (means[tradeoffs.STYLE].between(0, 1)).all() and means[tradeoffs.DIVERSITY].notna().all()
    gaps = pd.read_csv(out / "report" / "gaps.csv")
    assert len(gaps) == 3 * len(tradeoffs.LEVELS) * 2 and (gaps["loras"] <= 2).all()
    for figure in ("pareto-diversity-vs-style_score.png", "fronts-by-method.png"):
        assert (out / "report" / figure).stat().st_size > 0
    # Re-running resumes: nothing is generated again, and the report is the same.
    assert main(["tradeoffs", str(out), "--loras", "neon", "stripes", *small]) == 0
    assert report.read_text() == text
