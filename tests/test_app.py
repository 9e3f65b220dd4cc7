"""The web app's callbacks without a browser, on the miniature world at 2 steps: Compare, Tune, Make a LoRA."""

from __future__ import annotations

import math
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from autolora import generate, load_pipeline
from autolora.app.engine import Controls, Engine, GenerationCancelled
from autolora.cli import build_parser, main
from autolora.cli.generate import check_args
from autolora.errors import ConfigError
from autolora.images import read_png_params

gr = pytest.importorskip("gradio")
from autolora.app import ui  # noqa: E402

METHODS = ("base", "lora", "autolora")
CONTROLS = Controls(
    prompt="a seven in neon style",
    lora="world:neon",
    cfg_base=4.0,
    cfg_lora=4.0,
    num_inference_steps=2,
    num_images=2,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine(load_pipeline("world"), model="world", out=tmp_path_factory.mktemp("app"))


@pytest.fixture
def controls():
    return CONTROLS


@pytest.fixture(scope="module")
def columns(engine):
    """The three columns of one request, rendered once for the tests that read them."""
    request = engine.request(CONTROLS)
    return request, {method: engine.render(request, method) for method in METHODS}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_copied_command_parses_to_the_options_the_app_ran(engine, controls):
    request = engine.request(
        replace(controls, negative_prompt="a blurry digit", gamma_end=0.5, interval=(0.1, 0.8))
    )
    argv = shlex.split(request.command)
    assert argv[:2] == ["autolora", "generate"] and "--compare" in argv
    assert check_args(build_parser().parse_args(argv[1:])) == request.options
    params = request.options.params
    assert params.negative_prompt == "a blurry digit"
    assert params.gamma_end == 0.5 and params.interval == (0.1, 0.8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gamma": -1.0}, "gamma"),
        ({"interval": (0.8, 0.2)}, "interval"),
        ({"prompt": "  "}, "--prompt is empty"),
        ({"lora": "world:nothing"}, "not loaded"),
        ({"lora": None}, "no LoRA chosen"),
        ({"lora_scale": -0.5}, "LoRA scale must be >= 0"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number"),
        ({"gamma": float("nan")}, "gamma must be a finite number"),
    ],
)
def test_bad_controls_are_refused_with_a_message_naming_them(engine, controls, change, message):
    with pytest.raises(ConfigError, match=message):
        engine.request(replace(controls, **change))


def page_values(controls: Controls, **changes) -> dict:
    """``controls`` as the page's widgets hold them."""
    values = {**vars(controls), "interval_start": controls.interval[0], "interval_end": controls.interval[1]}
    del values["interval"], values["cfg_interval"]
    del values["cads_tau"]
    unticked = {"gamma_ramp": False, "gamma_end": 1.5, "cfg_interval_on": False}
    advanced = {"cfg_interval_lo": 0.28, "cfg_interval_hi": 5.42, "cads_tau_start": 0.6, "cads_tau_end": 0.9}
    return {**values, **unticked, **advanced, **changes}


def test_prepare_reads_the_ramp_only_when_it_is_ticked(engine, controls):
    request, command = ui.prepare(engine, page_values(controls, gamma_end=0.25), "session")
    assert request.options.params.gamma_end is None and "--gamma-end" not in command
    request, command = ui.prepare(engine, page_values(controls, gamma_ramp=True, gamma_end=0.25), "session")
    assert request.options.params.gamma_end == 0.25 and "--gamma-end 0.25" in command


def test_advanced_controls_reach_the_run_and_the_copied_command(engine, controls):
    request, command = ui.prepare(engine, page_values(controls, cads_noise=0.0, cache_threshold=0), "session")
    params = request.options.params
    assert (params.cfg_interval, params.cads_noise, params.cache_threshold) == (None, None, None)
    assert "--cfg-interval" not in command and "--cads-noise" not in command
    advanced = {"cfg_interval_on": True, "cads_noise": 0.25, "cache_interval": 3.0, "cache_threshold": 0.5}
    request, command = ui.prepare(engine, page_values(controls, **advanced), "session")
    params = request.options.params
    assert params.cfg_interval == (0.28, 5.42) and params.cads_noise == 0.25
    assert (params.cache_interval, params.cache_threshold) == (3, 0.5)
    for flag in (
        "--cfg-interval 0.28,5.42",
        "--cads-noise 0.25",
        "--cache-interval 3",
        "--cache-threshold 0.5",
    ):
        assert flag in command
    argv = shlex.split(command)[1:]
    assert check_args(build_parser().parse_args(argv)) == request.options


def test_prepare_shows_bad_controls_as_a_gradio_error(engine, controls):
    with pytest.raises(gr.Error, match="gamma"):
        ui.prepare(engine, page_values(controls, gamma=-1.0), "session")
    with pytest.raises(gr.Error, match="seed must be a whole number"):
        ui.prepare(engine, page_values(controls, seed=None), "session")


def test_columns_are_generate_from_the_same_seeds_with_the_cli_metadata(engine, controls, columns):
    _, columns = columns
    pipe = engine.pipe
    pipe.set_adapters([engine.adapters["world:neon"]], [1.0])
    for method, paths in columns.items():
        expected = generate(
            pipe, controls.prompt, method=method, num_inference_steps=2, seed=0, num_images=2, cfg_base=4.0,
            cfg_lora=4.0, gamma=1.5, progress=False,
        )  # fmt: skip
        for seed, (path, image) in enumerate(zip(paths, expected, strict=True)):
            assert np.array_equal(pixels(Image.open(path)), pixels(image))
            params = read_png_params(path)
            assert (params["method"], params["seed"], params["prompt"]) == (method, seed, controls.prompt)
            loras = [{"source": "world:neon", "scale": 1.0, "adapter_name": None, "weight_name": None}]
            assert params["loras"] == (loras if method != "base" else None)
            assert params["gamma"] == (1.5 if method == "autolora" else None)
    base, autolora = (pixels(Image.open(columns[m][0])) for m in ("base", "autolora"))
    assert not np.array_equal(base, autolora)


def test_each_request_uses_its_own_lora_and_scale(engine, controls):
    controls = replace(controls, num_images=1)
    first = engine.request(controls)
    before = [pixels(Image.open(path)) for path in engine.render(first, "lora")]
    engine.render(engine.request(replace(controls, lora="world:chalk", lora_scale=0.5)), "lora")
    again = [pixels(Image.open(path)) for path in engine.render(first, "lora")]
    assert all(np.array_equal(a, b) for a, b in zip(before, again, strict=True))
    other = engine.render(engine.request(replace(controls, lora="world:chalk")), "lora")
    assert not np.array_equal(pixels(Image.open(other[0])), before[0])


def test_concurrent_requests_are_queued_not_mixed(engine, controls):
    from concurrent.futures import ThreadPoolExecutor

    requests = [
        engine.request(replace(controls, num_images=1, lora=lora, seed=seed))
        for lora, seed in (("world:neon", 3), ("world:chalk", 4))
    ]

    def run(request):
        return pixels(Image.open(engine.render(request, "autolora")[0]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(run, requests))
    alone = [run(request) for request in requests]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))


def test_progress_reports_every_step(engine, controls):
    steps = []
    engine.render(
        engine.request(replace(controls, num_inference_steps=3)),
        "autolora",
        on_step=lambda i, n: steps.append((i, n)),
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_stop_ends_the_session_s_generation_and_gives_the_adapters_back(engine, controls):
    request = engine.request(replace(controls, num_images=1))
    engine.cancel("visitor")
    with pytest.raises(GenerationCancelled, match="stopped at step 1"):
        engine.render(request, "autolora", session="visitor")
    assert engine.pipe.get_active_adapters() == [engine.adapters["world:neon"]]
    # Another visitor is not stopped; a new request of the same visitor clears its Stop.
    assert len(engine.render(request, "base", session="other")) == 1
    engine.clear_cancel("visitor")
    assert len(engine.render(request, "base", session="visitor")) == 1


def test_metrics_table_holds_a_number_per_column_and_metric(engine, columns):
    request, columns = columns
    galleries = {method: [(str(path), "") for path in paths] for method, paths in columns.items()}
    table = ui.measure(engine, request, galleries)
    assert list(table["method"]) == ["Base CFG", "LoRA + CFG", "AutoLoRA"]
    assert list(table.columns[1:]) == ["diversity", "style score", "digit score"]
    assert all(math.isfinite(value) for value in table.iloc[:, 1:].to_numpy().ravel())


def test_uploaded_garbage_is_an_error_message_and_loads_nothing(engine, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    adapters = dict(engine.adapters)
    update, status = ui.upload_lora(engine, str(garbage))
    assert status.startswith("**Error:**") and "corrupt or unreadable safetensors" in status
    assert engine.adapters == adapters and update == gr.update()


def test_uploaded_lora_becomes_a_choice(engine, tmp_path):
    from autolora.world.assets import lora_path

    copy = tmp_path / "my-style.safetensors"
    copy.write_bytes(lora_path("stripes").read_bytes())
    update, status = ui.upload_lora(engine, str(copy))
    assert status == "Loaded my-style.safetensors."
    assert update["value"] == str(copy) and str(copy) in update["choices"]


def test_the_page_has_a_compare_a_make_a_lora_and_a_tune_tab(engine):
    app = ui.build_app(engine)
    tabs = [block for block in app.blocks.values() if isinstance(block, gr.Tab)]
    assert [tab.label for tab in tabs] == ["Compare", "Make a LoRA", "Tune"]
    buttons = [block.value for block in app.blocks.values() if isinstance(block, gr.Button)]
    assert sorted(buttons) == ["Generate", "Make the LoRA", "Stop", "Stop", "Tune", "Use this setting"]


def test_app_command_refuses_bad_options_before_loading(tmp_path, capsys):
    assert main(["app", "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["app", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["app", "--features", "nothing"]) == 2
    assert "--features nothing: unknown" in capsys.readouterr().err
    assert main(["app", "--prior", str(tmp_path)]) == 2
    assert "is not a prior folder" in capsys.readouterr().err


def test_any_model_with_a_lora_file_works_like_the_world(tmp_path):
    from autolora.testing import random_lora_file, tiny_pipeline

    pipe = tiny_pipeline("sd15", tmp_path / "tokenizer")
    pipe.save_pretrained(tmp_path / "model")
    lora = str(random_lora_file(pipe, tmp_path / "style.safetensors"))
    engine = Engine(load_pipeline(str(tmp_path / "model")), model=str(tmp_path / "model"), features="world")
    engine.add_lora(lora, scale=0.5)
    assert engine.lora_choices() == [lora] and engine.default_lora() == lora and engine.scales[lora] == 0.5
    assert engine.default_prompt() == ""
    request = engine.request(
        Controls(prompt="a red cat", lora=lora, lora_scale=0.5, num_inference_steps=2, num_images=2)
    )
    assert f"--lora {lora}:0.5" in request.command and "--cfg-base" not in request.command
    columns = {method: [Image.open(path) for path in engine.render(request, method)] for method in METHODS}
    assert read_png_params(engine.render(request, "autolora")[0])["cfg_base"] == 7.5  # SD1.5's default
    table = engine.measure(request, columns)
    assert list(table.columns) == ["method", "diversity"]  # the world's scores only apply to the world


# --- Tune ------------------------------------------------------------------------------------------

TUNE_VALUES = {
    "tune_prompts": "",
    "trials": 2,
    "seeds": 2,
    "methods": ["lora", "autolora"],
    "diversity_metric": "diversity",
    "adherence_metric": "world:style",
    "adherence_column": "",
    "metric_options": "",
    "floor": 0,
    "floor_ratio": 0.9,
    "sampler_seed": 0,
    "prompt": "a seven in neon style",
    "lora": "world:neon",
    "lora_scale": 1.0,
    "num_inference_steps": 2,
}


@pytest.fixture(scope="module")
def tuned(engine):
    """One search of the Tune tab, with the progress it reported."""
    reported = []
    outputs = ui.run_tune(
        engine, TUNE_VALUES, "tuner", lambda *args, **kwargs: reported.append((args, kwargs))
    )
    return outputs, reported


def test_tune_tab_runs_autolora_tune_on_the_loaded_model_as_the_cli_does(engine, tuned, tmp_path):
    from autolora.cli.tune import tune_spec

    outputs, reported = tuned
    assert outputs["status"].startswith("Recommended: trial ")
    table = outputs["table"]
    assert list(table.columns) == ui.TUNE_COLUMNS and len(table) == 2
    assert all(math.isfinite(v) for v in table[["diversity", "adherence"]].to_numpy().ravel())
    assert [Path(f).name for f in outputs["files"]] == ["tuned.toml", "front.csv"]
    reference = pd.read_csv(outputs["files"][1]).set_index("trial").loc[0]
    assert f"(floor {0.9 * reference['adherence']:.3f})" in outputs["status"]  # the page's floor 0: relative
    assert Path(outputs["plot"]).name == "pareto-diversity-vs-style_score.png"
    assert [(args[0], kwargs["unit"]) for args, kwargs in reported] == [
        ((1, 2), "trials"),
        ((2, 2), "trials"),
    ]
    assert reported[0][1]["desc"].startswith("trial 0 method=lora cfg_lora=4")
    # The copied command is the same search: the CLI, on a freshly loaded model, finds the same numbers.
    argv = shlex.split(outputs["command"])[1:]
    assert tune_spec(build_parser().parse_args(argv)) == engine.tune_request(ui_tune_controls()).spec
    out = argv.index("--out") + 1
    argv[out] = str(tmp_path / "cli")
    assert main(argv) == 0
    cli = pd.read_csv(tmp_path / "cli" / "front.csv").sort_values("trial")
    app = pd.read_csv(Path(outputs["files"][1])).sort_values("trial")
    pd.testing.assert_frame_equal(
        cli[["settings", "diversity", "adherence"]], app[["settings", "diversity", "adherence"]]
    )


def ui_tune_controls():
    from autolora.app.engine import TuneControls

    return TuneControls(
        lora="world:neon",
        prompts=("a seven in neon style",),
        trials=2,
        seeds=2,
        num_inference_steps=2,
        methods=("lora", "autolora"),
    )


def test_use_this_setting_gives_the_compare_tab_the_tuned_setting(engine, controls, tuned):
    outputs, _ = tuned
    settings = outputs["settings"]
    assert settings["lora"] == "world:neon" and outputs["choice"]["value"] in settings["trials"]
    cases = [*settings["trials"].values()]
    cases += [
        {"method": "lora", "cfg_lora": 12.5, "cfg_interval": [0.31, 6.2], "lora_scale": 0.674},
        {"method": "lora", "cfg_lora": 5.5, "cads_noise": 0.123, "cads_tau": [0.5, 0.85], "lora_scale": 1.1},
    ]
    for setting in cases:
        request, _ = ui.prepare(engine, page_values(controls, **ui.setting_values(setting)), "session")
        params = request.options.params
        assert request.options.loras[0].scale == setting["lora_scale"]
        assert params.cfg_lora == setting["cfg_lora"]
        assert params.cfg_interval == (tuple(setting["cfg_interval"]) if "cfg_interval" in setting else None)
        assert params.cads_noise == setting.get("cads_noise")
        if "cads_tau" in setting:
            assert params.cads_tau == tuple(setting["cads_tau"])
        if setting["method"] == "autolora":
            assert (params.gamma, params.cfg_base, params.gamma_end) == (
                setting["gamma"],
                setting["cfg_base"],
                None,
            )


def test_stopped_tune_ends_after_its_trial_and_resumes_when_run_again(tmp_path):
    engine = Engine(load_pipeline("world"), model="world", out=tmp_path)  # no LoRA loaded yet
    values = {**TUNE_VALUES, "sampler_seed": 7, "methods": ["lora"]}
    engine.cancel("stopper")
    stopped = ui.run_tune(engine, values, "stopper")
    assert stopped["status"] == "**Stopped:** tune stopped after trial 1; run it again to resume"
    assert stopped["table"].empty and stopped["files"] is None
    engine.clear_cancel("stopper")
    resumed = ui.run_tune(engine, values, "stopper")
    assert sorted(resumed["table"]["trial"]) == [0, 1]  # trial 0 kept, one more run


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": 1}, "two distinct seeds"),
        ({"adherence_metric": "nothing"}, "unknown metric 'nothing'"),
        ({"adherence_metric": "diversity"}, "tune needs a image-level one"),
        ({"methods": []}, "unknown tune method"),
        ({"metric_options": "no-dot"}, "expected METRIC.KEY=VALUE"),
        ({"lora": None}, "no LoRA chosen"),
    ],
)
def test_bad_tune_values_are_a_message_and_run_nothing(engine, change, message):
    outputs = ui.run_tune(engine, {**TUNE_VALUES, **change}, "session")
    assert outputs["status"].startswith("**Error:**") and message in outputs["status"]
    assert outputs["table"].empty and outputs["plot"] is None


def test_a_floor_no_setting_reaches_is_said_plainly(engine):
    outputs = ui.run_tune(engine, {**TUNE_VALUES, "floor": 2.0, "methods": ["lora"]}, "session")
    assert outputs["status"].startswith("**No setting reached the adherence floor 2.000**")
    assert (outputs["table"]["meets floor"] == "no").all()


def test_a_model_without_evaluators_needs_another_adherence_metric(engine):
    other = Engine(engine.pipe, model="my/model", out=engine.out)
    outputs = ui.run_tune(other, {**TUNE_VALUES, "lora": "my.safetensors"}, "session")
    assert (
        "world:style scores only the miniature world's images and my/model has no evaluator"
        in outputs["status"]
    )
    assert "clip_score" in outputs["status"] and "judge:pc_sa" in outputs["status"]


# --- Make a LoRA -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    from app_fixtures import world_prior

    return world_prior(tmp_path_factory.mktemp("prior"))


def test_make_a_lora_without_a_prior_says_how_to_make_one(engine, tmp_path):
    from app_fixtures import reference_images

    before = engine.lora_choices()
    update, file, status = ui.make_lora(
        engine, None, [str(p) for p in reference_images(tmp_path, 0)], "", 0, 1.0
    )
    assert status == ui.NO_PRIOR and file is None and update == gr.update()
    assert "autolora bank build" in status and "autolora prior train" in status and "--prior" in status
    assert engine.lora_choices() == before


def test_made_lora_is_the_cli_synth_lora_and_becomes_a_choice(engine, prior, controls, tmp_path):
    from app_fixtures import reference_images
    from safetensors.torch import load_file

    refs = [str(p) for p in reference_images(tmp_path / "refs", 42)]
    update, file, status = ui.make_lora(engine, str(prior), refs, "my style", 3, 1.0)
    assert status.startswith("Made my_style-") and "from 2 image(s)" in status
    assert update["value"] == file and file in update["choices"] and file in engine.lora_choices()
    assert (
        main(
            [
                "synth",
                "--prior",
                str(prior),
                "--ref",
                *refs,
                "--seed",
                "3",
                "--out",
                str(tmp_path / "cli.safetensors"),
            ]
        )
        == 0
    )
    made, cli = load_file(file), load_file(tmp_path / "cli.safetensors")
    assert made.keys() == cli.keys() and all(torch.equal(made[k], cli[k]) for k in made)
    request = engine.request(replace(controls, lora=file, num_images=1))
    assert len(engine.render(request, "autolora")) == 1


def test_make_a_lora_refuses_no_images_with_a_message(engine, prior):
    update, file, status = ui.make_lora(engine, str(prior), [], "", 0, 1.0)
    assert status == "**Error:** no reference images: upload a few images of the style or subject"
    assert file is None and update == gr.update()


def test_uploaded_prior_is_checked_against_the_app_s_model(engine, prior, tmp_path):
    files = [str(prior / "prior.json"), str(prior / "prior.safetensors")]
    folder, status = ui.upload_prior(engine, files)
    assert status.startswith(f"Prior `{folder}`: diffusion, base model `world`")
    assert (Path(folder) / "prior.safetensors").read_bytes() == (prior / "prior.safetensors").read_bytes()
    _, status = ui.upload_prior(engine, files[:1])
    assert status == "**Error:** upload the prior's two files together: prior.json and prior.safetensors"


@pytest.fixture(scope="module")
def foreign_prior(tmp_path_factory):
    """A PCA prior of a tiny SD1.5 model, and that model's folder."""
    from synthesis_fixtures import save_tiny_base, write_lora_folder

    from autolora.synthesis import PriorConfig, build_bank, train_prior
    from autolora.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("foreign")
    base = save_tiny_base(root)
    loras = write_lora_folder(tiny_pipeline("sd15", root / "tokenizers"), root / "loras")
    train_prior(
        build_bank(loras, str(base), 2, root / "bank"), PriorConfig(kind="pca", components=2), root / "prior"
    )
    return root / "prior", base


def test_a_prior_of_another_base_model_is_refused_naming_both(engine, foreign_prior):
    prior, base = foreign_prior
    update, status = ui.upload_prior(engine, [str(prior / n) for n in ("prior.json", "prior.safetensors")])
    assert update == gr.update()
    assert (
        status.startswith("**Error:** prior ")
        and f"is for base model {base}, not this app's model world" in status
    )


def test_app_command_refuses_a_prior_of_another_base_model_before_serving(foreign_prior, capsys):
    prior, base = foreign_prior
    assert main(["app", "--prior", str(prior)]) == 2
    assert (
        f"is for base model {base}, not this app's model world: its module unet." in capsys.readouterr().err
    )


def test_a_pca_prior_makes_the_lora_by_inversion_on_the_app_s_model_as_the_cli_does(engine, prior, tmp_path):
    from app_fixtures import reference_images
    from safetensors.torch import load_file

    from autolora.synthesis import Bank, PriorConfig, train_prior

    train_prior(Bank.open(prior.parent / "bank"), PriorConfig(kind="pca", components=2), tmp_path / "pca")
    refs = [str(p) for p in reference_images(tmp_path / "refs", 5)]
    request = engine.request(replace(CONTROLS, num_images=1))
    before = engine.render(request, "lora")
    _, file, status = ui.make_lora(engine, str(tmp_path / "pca"), refs, "", 0, 1.0, 2)
    assert status.startswith("Made made-") and file in engine.lora_choices()
    cli = ["synth", "--prior", str(tmp_path / "pca"), "--ref", *refs, "--base", "world", "--fit-steps", "2"]
    assert main([*cli, "--out", str(tmp_path / "cli.safetensors")]) == 0
    made, expected = load_file(file), load_file(tmp_path / "cli.safetensors")
    assert all(torch.allclose(made[k], expected[k], atol=1e-6) for k in expected)
    # The inversion's adapter is gone: the other LoRAs render as before.
    again = engine.render(request, "lora")
    assert np.array_equal(pixels(Image.open(before[0])), pixels(Image.open(again[0])))
