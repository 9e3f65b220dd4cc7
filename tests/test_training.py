"""The resumable training loop: exact resumption after a crash, and its learning-rate schedule."""

import itertools

import pytest
import torch

from autolora.training import Schedule, learning_rate_factor, run_stage


class Crash(Exception):
    pass


def _train(checkpoint, crash_at: int | None = None) -> tuple[torch.Tensor, int]:
    """8 warm-up-and-decay steps of a toy regression: weights and steps taken; ``Crash`` on call ``crash_at``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(64, 4)
    calls = iter(range(1000))

    def loss_fn(generator):
        if next(calls) == crash_at:
            raise Crash
        batch = data[torch.randint(64, (8,), generator=generator)]
        return (model(batch) - batch.sum(1, keepdim=True)).pow(2).mean()

    schedule = Schedule(8, learning_rate=0.1, warmup=3, checkpoint_every=2)
    run_stage("toy", {"model": model}, model.parameters(), loss_fn, schedule, seed=1, checkpoint=checkpoint)
    return model.weight.detach().clone(), next(calls)


def test_a_crashed_stage_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    straight, steps = _train(tmp_path / "a.ckpt")
    with pytest.raises(Crash):
        _train(tmp_path / "b.ckpt", crash_at=5)
    assert torch.load(tmp_path / "b.ckpt", weights_only=False)["step"] == 4
    resumed, resumed_steps = _train(tmp_path / "b.ckpt")
    assert (steps, resumed_steps) == (8, 4) and torch.equal(resumed, straight)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    factors = [learning_rate_factor(step, 100, 10) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert learning_rate_factor(100, 100, 10) == pytest.approx(0.1)
