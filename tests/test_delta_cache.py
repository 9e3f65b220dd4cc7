import pytest
import torch

from autolora.delta_cache import DeltaCache, DeltaCachePolicy, relative_l1
from autolora.errors import ConfigError
from autolora.guidance import autolora, autolora_from_delta, guidance_delta


def _eps(seed):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_eq_7_from_the_delta_of_the_same_step_is_eq_7():
    base, lora = _eps(0), _eps(1)
    delta = guidance_delta(base, lora)
    assert torch.allclose(autolora_from_delta(lora, delta, 1.5), autolora(base, lora, 1.5), atol=1e-6)
    assert torch.equal(autolora_from_delta(lora, delta, 1.0), lora)


@pytest.mark.parametrize("interval", [1, 2, 3, 5])
def test_interval_k_refreshes_on_every_kth_guided_step(interval):
    cache = DeltaCache(DeltaCachePolicy(interval=interval))
    refreshed = []
    for step in range(10):
        refreshed.append(cache.due())
        if refreshed[-1]:
            cache.store(_eps(2 * step), _eps(2 * step + 1))
        else:
            cache.reuse(_eps(2 * step + 1), 1.5)
    assert refreshed == [step % interval == 0 for step in range(10)]


def test_reuse_applies_the_stored_delta():
    cache = DeltaCache(DeltaCachePolicy(interval=3))
    base, lora, later_lora = _eps(0), _eps(1), _eps(2)
    cache.store(base, lora)
    assert torch.allclose(cache.reuse(later_lora, 2.0), later_lora + (lora - base), atol=1e-6)


def test_adaptive_rule_accumulates_the_lora_prediction_drift():
    cache = DeltaCache(DeltaCachePolicy(interval=10, threshold=0.25))
    start = torch.ones(4)
    cache.store(torch.zeros(4), start)
    assert relative_l1(1.1 * start, start) == pytest.approx(0.1)
    assert not cache.drifted(1.1 * start)  # 0.1
    assert not cache.drifted(1.2 * start)  # 0.1 + 0.0909
    assert cache.drifted(1.3 * start)  # + 0.0833 > 0.25
    cache.store(torch.zeros(4), 1.3 * start)
    assert cache.drift == 0.0 and cache.age == 0


def test_reuse_before_any_refresh_raises():
    with pytest.raises(RuntimeError, match="first guided step"):
        DeltaCache(DeltaCachePolicy(interval=2)).reuse(_eps(0), 1.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "cache_interval"),
        ({"interval": True}, "cache_interval"),
        ({"threshold": 0.1}, "needs cache_interval > 1"),
        ({"interval": 2, "threshold": 0.0}, "cache_threshold"),
    ],
)
def test_bad_policy_raises_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        DeltaCachePolicy(**options)
