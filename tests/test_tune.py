"""``autolora tune`` on the miniature world at a tiny budget: front, preset, resume, early stopping."""

import dataclasses

import optuna
import pandas as pd
import pytest

from autolora.cli import main
from autolora.errors import ConfigError
from autolora.experiments.config import LoRASpec, load_config
from autolora.pareto import pareto_mask
from autolora.tune import TuneSpec, _suggest, tune

SPEC = TuneSpec(
    model="world",
    loras=(LoRASpec(source="world:chalk"),),
    prompts=("a seven in chalky style",),
    seeds=(0, 1, 2, 3),
    metric_options={"diversity": {"extractor": "world"}, "world:style": {"style": "chalk"}},
    budget_images=12,
    num_inference_steps=2,
)


def _study(out):
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{(out / 'study.db').resolve()}")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    return out, tune(SPEC, out, progress=False, log=lambda line: None)


def test_tune_spends_its_image_budget_starting_from_lora_cfg(tuned):
    _, result = tuned
    assert len(result.trials) == 3 and result.trials["images"].sum() == 12
    reference = result.trials.iloc[0]
    assert reference["params"] == {"method": "lora", "cfg_lora": 4.0, "lora_scale": 1.0}
    # The floor is 0.9 x the reference's adherence, which the reference therefore meets.
    assert result.floor == pytest.approx(0.9 * reference["adherence"])
    assert reference["feasible"]


def test_tune_writes_front_plot_and_a_preset_that_sweep_reads(tuned):
    out, result = tuned
    names = {path.name for path in result.files}
    assert names == {"front.csv", "front.md", "pareto-diversity-vs-style_score.png", "tuned.toml"}
    front = pd.read_csv(out / "front.csv")
    assert front["on_front"].tolist() == pareto_mask(front[["diversity", "adherence"]].to_numpy().tolist())
    best = result.recommended
    assert best["on_front"] and best["feasible"]
    preset = load_config(out / "tuned.toml")
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in best["params"].items()}
    assert preset.generate == {**expected, "num_inference_steps": 2}
    assert preset.seeds == [0, 1, 2, 3] and preset.loras[0].source == "world:chalk"
    assert len(list((out / "trials").rglob("*.png"))) == 12


def test_tune_resumes_where_it_stopped(tuned):
    out, first = tuned
    more = dataclasses.replace(SPEC, budget_images=20)
    result = tune(more, out, progress=False, log=lambda line: None)
    assert len(result.trials) == 5
    pd.testing.assert_frame_equal(
        result.trials.iloc[:3].drop(columns="on_front"), first.trials.drop(columns="on_front")
    )
    again = tune(more, out, progress=False, log=lambda line: None)
    assert len(again.trials) == 5


def test_a_trial_killed_mid_run_is_run_again(tuned):
    out, _ = tuned
    study = _study(out)
    study.enqueue_trial({"method": "lora", "lora/cfg_lora": 6.0, "lora/lora_scale": 0.5})
    killed = study.ask()
    _suggest(killed, SPEC.methods, 4.0)  # then left RUNNING, as by a killed process
    spec = dataclasses.replace(SPEC, budget_images=24)
    result = tune(spec, out, progress=False, log=lambda line: None)
    assert _study(out).trials[killed.number].state == optuna.trial.TrialState.FAIL
    rerun = result.trials[result.trials["trial"] > killed.number].iloc[0]
    assert rerun["params"] == {"method": "lora", "cfg_lora": 6.0, "lora_scale": 0.5}


def test_hopeless_settings_stop_after_half_their_seeds(tmp_path):
    # A style probability never reaches 2: every trial's interval is below the floor after half its seeds.
    spec = dataclasses.replace(SPEC, prompts=("a seven in chalky style", "a two in chalky style"), floor=2.0)
    tune(spec, tmp_path, progress=False, log=lambda line: None)
    pruned = [t for t in _study(tmp_path).trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.user_attrs["images"] == 4 for t in pruned)  # 2 prompts x 2 of 4 seeds
    assert sum(t.user_attrs.get("images", 0) for t in _study(tmp_path).trials) <= 12


def test_another_setup_in_the_same_folder_is_refused(tuned):
    out, _ = tuned
    with pytest.raises(ConfigError, match="another setup"):
        tune(dataclasses.replace(SPEC, seeds=(0, 1, 2, 3, 4)), out, progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget_images": None}, "give a budget"),
        ({"budget_images": 3}, "less than one trial"),
        ({"seeds": (0,)}, "two distinct seeds"),
        ({"methods": ("lora", "magic")}, "magic"),
        ({"floor_ratio": 1.5}, "floor-ratio"),
    ],
)
def test_bad_specs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(SPEC, **change)


def test_wrong_metric_level_is_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="image-level"):
        tune(dataclasses.replace(SPEC, adherence_metric="diversity"), tmp_path, progress=False)
    assert not (tmp_path / "study.db").exists()


def test_tune_cli(tmp_path, capsys):
    world = ["--model", "world", "--lora", "world:chalk", "--prompt", "a seven in chalky style"]
    options = ["--seeds", "2", "--steps", "2", "--budget-images", "4", "--methods", "lora", "--no-progress"]
    assert main(["tune", *world, *options, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "recommended: trial" in printed and "tuned.toml" in printed
    assert main(["tune", "--model", "world", "--lora", "world:chalk", "--out", str(tmp_path)]) == 2


def test_generate_preset_reads_the_tuned_setting_and_flags_override_it(tuned):
    from autolora.cli import build_parser
    from autolora.cli.generate import generation_params
    from autolora.params import GenerationParams

    out, _ = tuned  # earlier tests may have extended the study: read the preset it holds now
    command = ["generate", "--model", "world", "--lora", "world:chalk", "--prompt", "x", "--out", str(out)]
    args = build_parser().parse_args([*command, "--preset", str(out / "tuned.toml")])
    expected = GenerationParams(**load_config(out / "tuned.toml").generate)
    assert expected.num_inference_steps == 2
    assert generation_params(args) == expected
    args = build_parser().parse_args([*command, "--preset", str(out / "tuned.toml"), "--steps", "5"])
    assert generation_params(args) == dataclasses.replace(expected, num_inference_steps=5)
    args = build_parser().parse_args([*command, "--preset", str(out / "front.csv")])
    with pytest.raises(ConfigError, match="cannot parse"):
        generation_params(args)


def test_tune_runs_on_a_loaded_pipeline_and_stops_when_its_log_raises(tuned, tmp_path, monkeypatch):
    import autolora

    _, first = tuned
    pipe = autolora.load_pipeline("world")
    autolora.load_lora(pipe, "world:chalk")
    monkeypatch.setattr(autolora, "load_pipeline", lambda *a, **k: pytest.fail("tune loaded a pipeline"))
    result = tune(SPEC, tmp_path / "given", progress=False, log=lambda line: None, pipe=pipe)
    pd.testing.assert_frame_equal(result.trials, first.trials)

    def stop(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(SPEC, tmp_path / "stopped", progress=False, log=stop, pipe=pipe)
    states = [t.state for t in _study(tmp_path / "stopped").trials]
    # The map's settings not run yet stay queued for a resumed run.
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.WAITING] * 3


def test_lora_cfg_is_always_searched_as_the_reference(tmp_path):
    spec = dataclasses.replace(SPEC, methods=("autolora",), budget_images=8)
    assert spec.methods == ("lora", "autolora")
    tune(spec, tmp_path, progress=False, log=lambda line: None)
    trials = _study(tmp_path).trials
    assert trials[0].params["method"] == "lora" and len(trials) == 2


def test_the_maps_front_settings_follow_the_reference_within_the_search_space(tmp_path):
    from autolora.tune import _map_starts

    spec = dataclasses.replace(SPEC, budget_images=16)
    tune(spec, tmp_path, progress=False, log=lambda line: None)
    trials = _study(tmp_path).trials
    assert [t.params["method"] for t in trials] == ["lora", "interval-cfg", "cads", "lora"]
    assert trials[1].params["interval-cfg/cfg_lora"] == 4.0  # the default scale, w = 4
    assert trials[3].params == {"method": "lora", "lora/cfg_lora": 2.0, "lora/lora_scale": 0.75}
    # Scales are clipped to the searched range: half of w = 1.5 is below CFG 1.
    assert _map_starts(("lora",), 1.5) == [{"method": "lora", "lora/cfg_lora": 1.0, "lora/lora_scale": 0.75}]
