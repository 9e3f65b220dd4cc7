"""Guidance in a limited interval (Kynkäänniemi et al. 2024) and CADS (Sadat et al. 2024): math and hook."""

import math

import numpy as np
import pytest
import torch

from autolora import generate, load_lora
from autolora.cfg_hooks import noise_level
from autolora.errors import ConfigError
from autolora.guidance import CADSSchedule, cads_condition, cads_gamma, cfg, interval_cfg
from autolora.testing import random_lora_file, tiny_pipeline

PROMPT = "a photo of sks cat"
W = 4.5


def _eps(seed, shape=(2, 4, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- The pure functions -----------------------------------------------------------------------


def test_interval_cfg_inside_is_cfg_and_outside_is_the_conditional_prediction():
    uncond, cond = _eps(0), _eps(1)
    assert torch.equal(interval_cfg(uncond, cond, W, 1.0, (0.28, 5.42)), cfg(uncond, cond, W))
    assert torch.equal(interval_cfg(uncond, cond, W, 5.42, (0.28, 5.42)), cfg(uncond, cond, W))
    # The interval is open below and closed above, as in the paper: (sigma_lo, sigma_hi].
    assert interval_cfg(uncond, cond, W, 0.28, (0.28, 5.42)) is cond
    assert interval_cfg(uncond, cond, W, 6.0, (0.28, 5.42)) is cond


def test_cads_gamma_is_piecewise_linear_eq_5():
    assert cads_gamma(0.5, 0.6, 0.9) == 1.0
    assert cads_gamma(0.6, 0.6, 0.9) == 1.0
    assert cads_gamma(0.75, 0.6, 0.9) == pytest.approx(0.5)
    assert cads_gamma(0.9, 0.6, 0.9) == 0.0
    assert cads_gamma(1.0, 0.6, 0.9) == 0.0
    # tau1 = tau2 is a step, not a division by zero.
    assert [cads_gamma(t, 0.5, 0.5) for t in (0.4, 0.5, 0.6)] == [1.0, 1.0, 0.0]


def test_cads_condition_is_eq_4_and_6():
    y, n = _eps(0, (2, 7, 16)), _eps(1, (2, 7, 16))
    gamma, s = 0.3, 0.25
    y_hat = math.sqrt(gamma) * y + s * math.sqrt(1 - gamma) * n
    assert torch.allclose(cads_condition(y, n, gamma, s, psi=0.0), y_hat, atol=1e-6)
    rescaled = cads_condition(y, n, gamma, s, psi=1.0)
    # Each sample keeps its own mean and standard deviation.
    assert torch.allclose(rescaled.mean((1, 2)), y.mean((1, 2)), atol=1e-5)
    assert torch.allclose(rescaled.std((1, 2)), y.std((1, 2)), atol=1e-5)
    assert not torch.allclose(rescaled, y, atol=1e-2)


def test_cads_condition_without_annealing_is_the_condition_itself():
    y, n = _eps(0, (2, 7, 16)), _eps(1, (2, 7, 16))
    assert cads_condition(y, n, 1.0, 0.25, 1.0) is y


def test_cads_condition_with_zero_noise_and_rescale_restores_the_condition():
    y, n = _eps(0, (2, 7, 16)), _eps(1, (2, 7, 16))
    assert torch.allclose(cads_condition(y, n, 0.4, 0.0, 1.0), y, atol=1e-5)
    # Where gamma = 0 nothing is left to rescale: the condition's mean, never NaN.
    empty = cads_condition(y, n, 0.0, 0.0, 1.0)
    assert torch.allclose(empty, y.mean((1, 2), keepdim=True).expand_as(y))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise_scale": -0.1}, "cads_noise"),
        ({"tau": (0.9, 0.6)}, "cads_tau"),
        ({"tau": (0.2, 1.5)}, "cads_tau"),
        ({"psi": 1.5}, "cads_psi"),
    ],
)
def test_cads_schedule_refuses_bad_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        CADSSchedule(**options)


def test_noise_level_is_the_edm_sigma_of_the_schedule():
    class VP:
        alphas_cumprod = torch.tensor([0.5, 0.2])

    class Flow:
        class config:
            num_train_timesteps = 1000

    assert noise_level(VP, 1) == pytest.approx(2.0)
    assert noise_level(Flow, 500.0) == pytest.approx(1.0)
    assert noise_level(Flow, 1000.0) == math.inf


# --- Through the pipeline (tiny SD1.5) --------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd15")
    pipe = tiny_pipeline("sd15", folder)
    load_lora(pipe, str(random_lora_file(pipe, folder / "style.safetensors", text_encoder=True)))
    return pipe


def _image(pipe, **options):
    settings = {"method": "lora", "cfg_lora": W, "num_inference_steps": 4, "height": 32, "width": 32}
    settings |= {"num_images": 2, "output_type": "np", "progress": False}
    return generate(pipe, PROMPT, **{**settings, **options})


def test_interval_covering_every_step_equals_plain_cfg(pipe):
    assert np.array_equal(_image(pipe, cfg_interval=(0.0, math.inf)), _image(pipe))


def test_empty_interval_equals_the_conditional_model_alone(pipe):
    conditional = _image(pipe, cfg_lora=1.0)
    assert np.abs(_image(pipe, cfg_interval=(0.0, 0.0)) - conditional).max() < 1e-6


def test_partial_interval_guides_only_some_steps(pipe):
    sigmas = sorted(noise_level(pipe.scheduler, float(t)) for t in pipe.scheduler.timesteps)
    middle = (sigmas[0], sigmas[-1])  # leaves out the noisiest step
    partial = _image(pipe, cfg_interval=middle)
    assert np.abs(partial - _image(pipe)).max() > 1e-4
    assert np.abs(partial - _image(pipe, cfg_lora=1.0)).max() > 1e-4


def test_cads_that_never_anneals_equals_plain_cfg(pipe):
    assert np.array_equal(_image(pipe, cads_noise=0.25, cads_tau=(1.0, 1.0)), _image(pipe))


def test_cads_changes_images_with_paired_seeds(pipe):
    cads = _image(pipe, cads_noise=0.5, cads_tau=(0.2, 0.6))
    assert np.abs(cads - _image(pipe)).max() > 1e-3
    # Image i's condition noise depends on seed + i only, not on the batch it was made in.
    second = _image(pipe, cads_noise=0.5, cads_tau=(0.2, 0.6), seed=1, num_images=1)
    assert np.abs(second[0] - cads[1]).max() < 1e-5


def test_bad_cfg_interval_is_refused(pipe):
    with pytest.raises(ConfigError, match="cfg_interval"):
        _image(pipe, cfg_interval=(5.0, 0.3))
