import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from autolora import default_cfg_scale, generate, load_lora, load_pipeline
from autolora.errors import ConfigError, InputFileError
from autolora.testing import KINDS, random_lora_file, tiny_pipeline

SRC = Path(__file__).resolve().parents[1] / "src"
PROMPT = "a photo of sks cat"
SIZE = 32
STEPS = 2
# CFG scales that exercise both branches' CFG (Flux's true CFG included) with distinct w1, w2.
W_BASE, W_LORA = 3.0, 4.5


def _options(**extra):
    return {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "progress": False, **extra}


def _generate(pipe, **options):
    return generate(
        pipe, PROMPT, **{"cfg_base": W_BASE, "cfg_lora": W_LORA, "output_type": "np", **_options(**options)}
    )


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def pipe(kind, tmp_path):
    """A tiny pipeline of ``kind`` with one random LoRA (denoiser and text encoder) loaded."""
    pipe = tiny_pipeline(kind, tmp_path)
    load_lora(pipe, str(random_lora_file(pipe, tmp_path / "style.safetensors", text_encoder=True)))
    return pipe


def _adapter_state(pipe):
    from autolora.branches import lora_layers, pipeline_modules

    layers = lora_layers(pipeline_modules(pipe))
    return [(list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters) for layer in layers]


def test_gamma_one_equals_lora_cfg(pipe):
    lora = _generate(pipe, method="lora")
    assert np.abs(_generate(pipe, gamma=1.0) - lora).max() < 1e-5
    assert np.abs(_generate(pipe, gamma=1.0, branch_mode="sequential") - lora).max() < 1e-5


def test_gamma_zero_equals_base_cfg(pipe):
    base = _generate(pipe, method="base")
    assert np.abs(_generate(pipe, method="lora") - base).max() > 1e-3  # the LoRA changes the image
    assert np.abs(_generate(pipe, gamma=0.0) - base).max() < 1e-5
    assert np.abs(_generate(pipe, gamma=0.0, branch_mode="sequential") - base).max() < 1e-5


def test_method_base_equals_pipeline_with_adapters_disabled(pipe):
    pipe.disable_lora()
    own = pipe(
        PROMPT,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        **_call_options(pipe, W_BASE),
    )
    pipe.enable_lora()
    assert np.abs(_generate(pipe, method="base") - own.images).max() < 1e-6


def test_method_lora_equals_pipeline_own_call_with_seed(pipe):
    own = pipe(
        PROMPT,
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="np",
        **_call_options(pipe, W_LORA),
    )
    assert np.abs(_generate(pipe, method="lora", seed=5) - own.images).max() < 1e-6


def _call_options(pipe, w):
    cfg_argument = "true_cfg_scale" if type(pipe).__name__ == "FluxPipeline" else "guidance_scale"
    options = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, cfg_argument: w}
    if cfg_argument == "true_cfg_scale":
        options["negative_prompt"] = ""
    return options


def test_batched_equals_sequential(pipe):
    batched = _generate(pipe, gamma=1.7, num_images=2)
    sequential = _generate(pipe, gamma=1.7, num_images=2, branch_mode="sequential")
    assert np.abs(batched - sequential).max() < 1e-5


def test_batched_equals_sequential_without_cfg(pipe):
    options = {"cfg_base": 1.0, "cfg_lora": 1.0, "gamma": 2.0}
    batched = generate(pipe, PROMPT, output_type="np", **options, **_options())
    sequential = generate(pipe, PROMPT, output_type="np", branch_mode="sequential", **options, **_options())
    assert np.abs(batched - sequential).max() < 1e-5


@pytest.mark.parametrize(("w_base", "w_lora"), [(W_BASE, W_LORA), (1.0, W_LORA), (W_BASE, 1.0)])
def test_integrated_result_equals_step_by_step_algorithm_2(pipe, kind, w_base, w_lora):
    gamma = 1.5
    integrated = generate(
        pipe, PROMPT, gamma=gamma, cfg_base=w_base, cfg_lora=w_lora, output_type="latent", **_options()
    )
    reference = _reference_algorithm_2(pipe, kind, gamma=gamma, w_base=w_base, w_lora=w_lora)
    assert (integrated - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_cached_delta_equals_step_by_step_algorithm_2_with_held_delta(pipe, kind):
    # Two steps at cache_interval 2: step 0 evaluates both branches, step 1 the LoRA branch with step 0's delta.
    integrated = generate(
        pipe,
        PROMPT,
        gamma=1.5,
        cfg_base=W_BASE,
        cfg_lora=W_LORA,
        output_type="latent",
        cache_interval=2,
        **_options(),
    )
    reference = _reference_algorithm_2(pipe, kind, gamma=1.5, w_base=W_BASE, w_lora=W_LORA, cache_interval=2)
    assert (integrated - reference).abs().max() <= 1e-5 * reference.abs().max()
    # ... and not full AutoLoRA: much nearer the held-delta reference than the full one.
    full = _reference_algorithm_2(pipe, kind, gamma=1.5, w_base=W_BASE, w_lora=W_LORA)
    assert (integrated - full).abs().max() > 10 * (integrated - reference).abs().max()


def test_cache_interval_one_is_exactly_full_autolora(pipe):
    full = _generate(pipe, gamma=1.5, num_inference_steps=3)
    assert np.array_equal(_generate(pipe, gamma=1.5, num_inference_steps=3, cache_interval=1), full)
    assert np.array_equal(
        _generate(pipe, gamma=1.5, num_inference_steps=3, cache_interval=1, branch_mode="sequential"),
        _generate(pipe, gamma=1.5, num_inference_steps=3, branch_mode="sequential"),
    )


def _evaluated_rows(pipe, kind, **options):
    """The denoiser rows evaluated per step by ``_generate(**options)``, and its image."""
    rows = []
    # The denoiser's input layer sees every evaluation, and only real ones (not the pipeline's calls).
    handle = _INPUT_LAYER[kind](pipe).register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0])
    )
    try:
        image = _generate(pipe, **options)
    finally:
        handle.remove()
    return rows, image


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_branch_with_weight_zero_is_never_evaluated(pipe, kind, gamma):
    method = "lora" if gamma == 1 else "base"
    own_rows, own_image = _evaluated_rows(pipe, kind, method=method, num_inference_steps=3)
    rows, image = _evaluated_rows(pipe, kind, gamma=gamma, num_inference_steps=3)
    assert rows == own_rows and len(rows) == 3 * (2 if kind == "flux" else 1)
    assert np.abs(image - own_image).max() < 1e-5


def test_ramp_step_at_gamma_one_evaluates_the_lora_branch_only(pipe, kind):
    # gamma ramps 1.5 -> 1.0 over three steps: the last step's reference weight is zero.
    full_rows, _ = _evaluated_rows(pipe, kind, gamma=1.5, num_inference_steps=3)
    rows, _ = _evaluated_rows(pipe, kind, gamma=1.5, gamma_end=1.0, num_inference_steps=3)
    full_step = sum(full_rows) // 3
    assert sum(rows) == 2 * full_step + full_step // 2


@pytest.mark.parametrize(("cache", "refreshes"), [({"cache_interval": 2}, 2), ({"cache_interval": 3}, 2)])
def test_cached_steps_evaluate_the_lora_branch_only(pipe, kind, cache, refreshes):
    # Four steps: both branches on the refresh steps (0, 2 with k = 2; 0, 3 with k = 3), the LoRA branch else.
    lora_rows, _ = _evaluated_rows(pipe, kind, method="lora", num_inference_steps=4)
    rows, _ = _evaluated_rows(pipe, kind, gamma=1.5, num_inference_steps=4, **cache)
    assert sum(rows) == sum(lora_rows) + refreshes * sum(lora_rows) // 4


def test_adaptive_cache_refreshes_when_the_lora_prediction_drifts(pipe, kind):
    full = _generate(pipe, gamma=1.5, num_inference_steps=4)
    # A tiny threshold refreshes on every step: full AutoLoRA (branches evaluated one after the other).
    always = _generate(pipe, gamma=1.5, num_inference_steps=4, cache_interval=4, cache_threshold=1e-9)
    assert np.abs(always - full).max() < 1e-5
    # A huge threshold never triggers: the interval alone decides, as without a threshold.
    never = _generate(pipe, gamma=1.5, num_inference_steps=4, cache_interval=4, cache_threshold=1e9)
    assert np.array_equal(never, _generate(pipe, gamma=1.5, num_inference_steps=4, cache_interval=4))
    assert np.abs(never - full).max() > 1e-4


def test_one_call_per_step_pipelines_capture_the_reference_branch_only(pipe, kind):
    # The text encoders run once per pipeline run (a capture, or the pipeline's own run).
    encodings = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda module, args: encodings.append(1))
    try:
        _generate(pipe, method="lora")
        lora_runs = len(encodings)
        encodings.clear()
        _generate(pipe, gamma=1.5)
    finally:
        handle.remove()
    # Flux's true CFG makes two denoiser calls per step, so both branches are captured there.
    captures = 2 if kind == "flux" else 1
    assert len(encodings) == lora_runs * (1 + captures)


def test_paired_noise_image_i_uses_seed_plus_i(pipe):
    pair = _generate(pipe, seed=3, num_images=2)
    assert np.abs(pair[0] - _generate(pipe, seed=3)[0]).max() < 1e-5
    assert np.abs(pair[1] - _generate(pipe, seed=4)[0]).max() < 1e-5


def test_weights_unchanged_and_adapter_state_restored(pipe, tmp_path):
    second = load_lora(pipe, str(random_lora_file(pipe, tmp_path / "second.safetensors", seed=1)), scale=0.5)
    pipe.set_adapters(["style", second], adapter_weights=[0.8, 0.5])
    weights = {
        name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in _modules(pipe)
    }
    state = _adapter_state(pipe)
    for options in (
        {},
        {"branch_mode": "sequential"},
        {"reference": 0.3},
        {"lora_scale": 1.3},
        {"method": "base"},
    ):
        _generate(pipe, **options)
        assert _adapter_state(pipe) == state
    pipe.disable_lora()
    _generate(pipe)
    assert all(layer[2] for layer in _adapter_state(pipe))
    for name, module in _modules(pipe):
        for key, value in module.state_dict().items():
            assert torch.equal(value, weights[name][key]), key


def _modules(pipe):
    return [(name, module) for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)]


def test_interval_outside_runs_only_lora_cfg(pipe, kind):
    rows = []
    # The denoiser's input layer sees every evaluation, and only real ones (not the pipeline's calls).
    input_layer = _INPUT_LAYER[kind](pipe)
    handle = input_layer.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        out = generate(
            pipe,
            PROMPT,
            cfg_base=W_BASE,
            cfg_lora=W_LORA,
            output_type="np",
            interval=(0.5, 1.0),
            **_options(num_inference_steps=4),
        )
    finally:
        handle.remove()
    # Steps 0, 1 (progress 0, 0.25): LoRA CFG only (2 rows); steps 2, 3: both branches (4 rows).
    assert sum(rows) == 2 * 2 + 2 * 4
    full = generate(
        pipe, PROMPT, cfg_base=W_BASE, cfg_lora=W_LORA, output_type="np", **_options(num_inference_steps=4)
    )
    assert np.abs(out - full).max() > 1e-4


def test_empty_interval_equals_lora_cfg(pipe):
    assert np.abs(_generate(pipe, interval=(0.0, 0.0)) - _generate(pipe, method="lora")).max() < 1e-5


def test_gamma_ramp_from_one_to_one_equals_lora_cfg(pipe):
    lora = _generate(pipe, method="lora", num_inference_steps=4)
    assert np.abs(_generate(pipe, gamma=1.0, gamma_end=1.0, num_inference_steps=4) - lora).max() < 1e-5
    assert np.abs(_generate(pipe, gamma=1.0, gamma_end=3.0, num_inference_steps=4) - lora).max() > 1e-4


def test_reference_scale_zero_equals_base_reference(pipe):
    assert np.abs(_generate(pipe, reference=0.0) - _generate(pipe)).max() < 1e-5


def test_reference_adapter_set_guides_from_another_lora(pipe, tmp_path):
    other = load_lora(pipe, str(random_lora_file(pipe, tmp_path / "other.safetensors", seed=7)))
    pipe.set_adapters([other])
    other_only = _generate(pipe, method="lora", cfg_lora=W_BASE)
    pipe.set_adapters(["style"])
    guided = _generate(pipe, reference={other: 1.0}, gamma=0.0)
    assert np.abs(guided - other_only).max() < 1e-5
    batched = _generate(pipe, reference={other: 0.7}, gamma=1.5)
    sequential = _generate(pipe, reference={other: 0.7}, gamma=1.5, branch_mode="sequential")
    assert np.abs(batched - sequential).max() < 1e-5


def test_adapter_state_restored_when_the_pipeline_fails(pipe):
    state = _adapter_state(pipe)

    def fail(*_):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _generate(pipe, callback_on_step_end=fail)
    assert _adapter_state(pipe) == state


def test_lora_scale_zero_lora_branch_equals_base(pipe):
    assert (
        np.abs(
            _generate(pipe, method="lora", lora_scale=0.0, cfg_lora=W_BASE) - _generate(pipe, method="base")
        ).max()
        < 1e-5
    )


def test_text_encoder_lora_base_branch_uses_base_encoder_embeddings(kind, tmp_path):
    pipe = tiny_pipeline(kind, tmp_path)
    path = random_lora_file(pipe, tmp_path / "te.safetensors", text_encoder=True, denoiser=False)
    load_lora(pipe, str(path))
    base, lora = _generate(pipe, method="base"), _generate(pipe, method="lora")
    assert np.abs(base - lora).max() > 1e-4  # only the embeddings differ between the branches
    assert np.abs(_generate(pipe, gamma=0.0) - base).max() < 1e-5
    assert np.abs(_generate(pipe, gamma=1.0) - lora).max() < 1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": (0.5, 0.2)}, "interval"),
        ({"interval": (-0.1, 1.0)}, "interval"),
        ({"gamma": -1.0}, "gamma"),
        ({"cfg_base": 0.5}, "cfg_base"),
        ({"lora_scale": -1.0}, "lora_scale"),
        ({"method": "best"}, "method"),
        ({"branch_mode": "parallel"}, "branch_mode"),
        ({"reference": {"missing": 1.0}}, "missing"),
        ({"reference": -0.5}, "reference"),
        ({"num_images": 0}, "num_images"),
        ({"cache_interval": 0}, "cache_interval"),
        ({"cache_interval": 1.5}, "cache_interval"),
        ({"cache_threshold": 0.1}, "cache_threshold needs cache_interval"),
        ({"cache_interval": 2, "cache_threshold": -1.0}, "cache_threshold"),
        ({"num_inference_steps": 0}, "num_inference_steps must be >= 1"),
        ({"height": 40, "width": None}, "height and width must be given together"),
        ({"guidance_scale": 3.0}, "cfg_base"),
        ({"guidance_rescale": 0.7}, "guidance_rescale"),
    ],
)
def test_bad_generate_arguments_raise_config_error(options, message, tmp_path):
    pipe = tiny_pipeline("sd15", tmp_path)
    load_lora(pipe, str(random_lora_file(pipe, tmp_path / "style.safetensors")))
    with pytest.raises(ConfigError, match=message):
        generate(pipe, PROMPT, **_options(**options))


def test_autolora_without_lora_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no LoRA"):
        generate(tiny_pipeline("sd15", tmp_path), PROMPT, **_options())


def test_default_cfg_scales_are_the_papers(tmp_path):
    assert default_cfg_scale(tiny_pipeline("sd15", tmp_path)) == 7.5
    assert default_cfg_scale(tiny_pipeline("sdxl", tmp_path)) == 5.0
    assert default_cfg_scale(tiny_pipeline("sd3", tmp_path)) == 7.0
    assert default_cfg_scale(tiny_pipeline("flux", tmp_path)) == 1.0  # guidance-distilled: no true CFG


def test_load_pipeline_missing_folder_raises_input_file_error(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_pipeline(str(tmp_path / "nowhere"))


def test_load_pipeline_reads_saved_folder(tmp_path):
    pipe = tiny_pipeline("sd15", tmp_path / "tok")
    pipe.save_pretrained(tmp_path / "saved")
    loaded = load_pipeline(str(tmp_path / "saved"))
    assert type(loaded) is type(pipe)


# An independent Algorithm 2: four plain denoiser calls per step, Eq. 7 written out, the scheduler stepped here.
# With cache_interval k, steps i with i % k != 0 evaluate the LoRA branch only and reuse the last delta.
@torch.no_grad()
def _reference_algorithm_2(pipe, kind, *, gamma, w_base, w_lora, cache_interval=1):
    scheduler = copy.deepcopy(pipe.scheduler)
    conditions = {}
    for branch in ("base", "lora"):
        pipe.enable_lora() if branch == "lora" else pipe.disable_lora()
        conditions[branch] = _CONDITIONS[kind](pipe)
    pipe.enable_lora()
    generator = [torch.Generator("cpu").manual_seed(0)]
    latents, extra = _LATENTS[kind](pipe, generator, scheduler)
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(latents, t) if kind in ("sd15", "sdxl") else latents
        eps = {}
        for branch in ("base", "lora") if i % cache_interval == 0 else ("lora",):
            pipe.enable_lora() if branch == "lora" else pipe.disable_lora()
            uncond, cond = (_DENOISE[kind](pipe, x, t, c, extra) for c in conditions[branch])
            eps[branch] = uncond + (w_base if branch == "base" else w_lora) * (cond - uncond)
        pipe.enable_lora()
        if "base" in eps:
            delta = eps["lora"] - eps["base"]
            guided = eps["base"] + gamma * (eps["lora"] - eps["base"])
        else:
            guided = eps["lora"] + (gamma - 1) * delta
        latents = scheduler.step(guided, t, latents, return_dict=False)[0]
    return latents


def _sd15_conditions(pipe):
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    return [{"encoder_hidden_states": uncond}, {"encoder_hidden_states": cond}]


def _sdxl_conditions(pipe):
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=cond.dtype)
    return [
        {
            "encoder_hidden_states": uncond,
            "added_cond_kwargs": {"text_embeds": uncond_pooled, "time_ids": time_ids},
        },
        {"encoder_hidden_states": cond, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}},
    ]


def _unet_latents(pipe, generator, scheduler):
    scheduler.set_timesteps(STEPS)
    pipe.scheduler.set_timesteps(STEPS)  # prepare_latents scales by the pipeline scheduler's initial sigma
    channels = pipe.unet.config.in_channels
    return pipe.prepare_latents(1, channels, SIZE, SIZE, torch.float32, "cpu", generator), None


def _unet_denoise(pipe, x, t, condition, extra):
    return pipe.unet(x, t, **condition, return_dict=False)[0]


def _sd3_conditions(pipe):
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(PROMPT, None, None, device="cpu")
    return [
        {"encoder_hidden_states": uncond, "pooled_projections": uncond_pooled},
        {"encoder_hidden_states": cond, "pooled_projections": pooled},
    ]


def _flux_conditions(pipe):
    conditions = []
    for prompt in ("", PROMPT):
        embeddings, pooled, text_ids = pipe.encode_prompt(prompt, None, device="cpu")
        conditions.append(
            {"encoder_hidden_states": embeddings, "pooled_projections": pooled, "txt_ids": text_ids}
        )
    return conditions


def _sd3_latents(pipe, generator, scheduler):
    scheduler.set_timesteps(STEPS)
    channels = pipe.transformer.config.in_channels
    return pipe.prepare_latents(1, channels, SIZE, SIZE, torch.float32, "cpu", generator), {}


def _flux_latents(pipe, generator, scheduler):
    channels = pipe.transformer.config.in_channels // 4
    latents, image_ids = pipe.prepare_latents(1, channels, SIZE, SIZE, torch.float32, "cpu", generator)
    config = scheduler.config
    mu = calculate_shift(
        latents.shape[1],
        config.base_image_seq_len,
        config.max_image_seq_len,
        config.base_shift,
        config.max_shift,
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    return latents, {
        "img_ids": image_ids,
        "guidance": torch.full([1], 3.5),
    }  # the pipeline's default guidance


def _sd3_denoise(pipe, x, t, condition, extra):
    return pipe.transformer(hidden_states=x, timestep=t.expand(1), **condition, return_dict=False)[0]


def _flux_denoise(pipe, x, t, condition, extra):
    timestep = t.expand(1) / 1000
    return pipe.transformer(hidden_states=x, timestep=timestep, **condition, **extra, return_dict=False)[0]


_INPUT_LAYER = {
    "sd15": lambda pipe: pipe.unet.conv_in,
    "sdxl": lambda pipe: pipe.unet.conv_in,
    "sd3": lambda pipe: pipe.transformer.pos_embed,
    "flux": lambda pipe: pipe.transformer.x_embedder,
}
_CONDITIONS = {
    "sd15": _sd15_conditions,
    "sdxl": _sdxl_conditions,
    "sd3": _sd3_conditions,
    "flux": _flux_conditions,
}
_LATENTS = {"sd15": _unet_latents, "sdxl": _unet_latents, "sd3": _sd3_latents, "flux": _flux_latents}
_DENOISE = {"sd15": _unet_denoise, "sdxl": _unet_denoise, "sd3": _sd3_denoise, "flux": _flux_denoise}


def test_importing_autolora_defers_torch_and_diffusers():
    code = "import sys, autolora; assert 'diffusers' not in sys.modules; autolora.generate; assert 'diffusers' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(SRC)})
