import pytest
import torch

from autolora.errors import ConfigError
from autolora.guidance import GuidanceSchedule, autolora, autolora_cfg, cfg


def _eps(seed):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_cfg_is_eq_4():
    uncond, cond = _eps(0), _eps(1)
    assert torch.allclose(cfg(uncond, cond, 7.5), uncond + 7.5 * (cond - uncond))
    assert torch.equal(cfg(uncond, cond, 0.0), uncond)


def test_cfg_scale_one_is_the_conditional_prediction_without_uncond():
    cond = _eps(1)
    assert cfg(None, cond, 1.0) is cond
    with pytest.raises(ValueError, match="unconditional"):
        cfg(None, cond, 2.0)


def test_autolora_is_eq_6_and_exact_at_zero_and_one():
    base, lora = _eps(0), _eps(1)
    assert torch.allclose(autolora(base, lora, 1.5), base + 1.5 * (lora - base), atol=1e-6)
    assert torch.equal(autolora(base, lora, 0.0), base)
    assert torch.equal(autolora(base, lora, 1.0), lora)


def test_autolora_cfg_is_eq_7():
    base_u, base_c, lora_u, lora_c = (_eps(seed) for seed in range(4))
    guided = autolora_cfg(base_u, base_c, lora_u, lora_c, w_base=5.0, w_lora=3.0, gamma=1.5)
    cfg_base = base_u + 5.0 * (base_c - base_u)
    cfg_lora = lora_u + 3.0 * (lora_c - lora_u)
    assert torch.allclose(guided, cfg_base + 1.5 * (cfg_lora - cfg_base), atol=1e-5)


def test_autolora_cfg_without_cfg_is_eq_6():
    base, lora = _eps(0), _eps(1)
    assert torch.equal(
        autolora_cfg(None, base, None, lora, w_base=1.0, w_lora=1.0, gamma=2.0), autolora(base, lora, 2.0)
    )


def test_default_schedule_guides_every_step_with_constant_gamma():
    schedule = GuidanceSchedule()
    assert all(schedule.is_active(step, 30) for step in range(30))
    assert {schedule.gamma_at(step, 30) for step in range(30)} == {1.5}


def test_interval_selects_steps_by_progress():
    schedule = GuidanceSchedule(interval=(0.25, 0.75))
    assert [schedule.is_active(step, 8) for step in range(8)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert not any(GuidanceSchedule(interval=(0.0, 0.0)).is_active(step, 8) for step in range(8))


def test_gamma_ramp_runs_linearly_from_first_to_last_step():
    schedule = GuidanceSchedule(gamma=1.0, gamma_end=2.0)
    assert [schedule.gamma_at(step, 5) for step in range(5)] == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert schedule.gamma_at(0, 1) == 1.0


@pytest.mark.parametrize(
    "options",
    [
        {"interval": (0.6, 0.4)},
        {"interval": (-0.1, 1.0)},
        {"interval": (0.0, 1.5)},
        {"interval": (0.5,)},
        {"gamma": -0.5},
        {"gamma_end": -1.0},
        {"gamma": float("nan")},
    ],
)
def test_out_of_range_schedule_raises_config_error(options):
    with pytest.raises(ConfigError):
        GuidanceSchedule(**options)
