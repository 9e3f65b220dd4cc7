"""The web app's callbacks without a browser, on the miniature world at 2 steps."""

from __future__ import annotations

import math
import shlex
from dataclasses import replace

import numpy as np
import pytest
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
    unticked = {"gamma_ramp": False, "gamma_end": 1.5, "cfg_interval_on": False}
    return {**values, **unticked, "cfg_interval_lo": 0.28, "cfg_interval_hi": 5.42, **changes}


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


def test_features_not_in_the_app_point_to_their_commands_without_buttons(engine):
    app = ui.build_app(engine)
    tabs = [block for block in app.blocks.values() if isinstance(block, gr.Tab)]
    assert [tab.label for tab in tabs] == ["Compare", "Make a LoRA", "Tune"]
    for title in ("Make a LoRA", "Tune"):
        assert "not in the app yet" in ui.UNAVAILABLE[title]
    assert "autolora synth" in ui.UNAVAILABLE["Make a LoRA"] and "autolora tune" in ui.UNAVAILABLE["Tune"]
    buttons = [block.value for block in app.blocks.values() if isinstance(block, gr.Button)]
    assert sorted(buttons) == ["Generate", "Stop"]


def test_app_command_refuses_bad_options_before_loading(tmp_path, capsys):
    assert main(["app", "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["app", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["app", "--features", "nothing"]) == 2
    assert "--features nothing: unknown" in capsys.readouterr().err


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
