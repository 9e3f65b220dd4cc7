import pytest
import torch
from PIL import Image

from autolora.errors import ConfigError
from autolora.metrics import ImageRecord, get_metric
from autolora.metrics.distribution import frechet_distance, kernel_inception_distance


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = gaussian(200, 8, seed=0)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_a_translated_set_is_the_squared_shift():
    x = gaussian(100, 6, seed=1)
    shift = torch.arange(6, dtype=torch.float64) / 3
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    x, y = gaussian(400, 3, seed=2), gaussian(400, 3, seed=3) * 2 + 1
    var_x, var_y = x.var(dim=0), y.var(dim=0)  # nearly diagonal: compare within sampling error
    closed = float((x.mean(0) - y.mean(0)).square().sum() + (var_x.sqrt() - var_y.sqrt()).square().sum())
    assert frechet_distance(x, y) == pytest.approx(closed, abs=0.1)


def test_frechet_distance_is_defined_with_fewer_images_than_dimensions():
    x = gaussian(5, 32, seed=4)
    # The covariance is singular: square roots of round-off eigenvalues leave ~sqrt(eps) * trace.
    trace = float(torch.cov(x.T).trace())
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-6 * trace)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    x, y, shifted = gaussian(300, 16, seed=5), gaussian(300, 16, seed=6), gaussian(300, 16, seed=7, shift=0.5)
    same, _ = kernel_inception_distance(x, y, subsets=20, subset_size=100)
    different, _ = kernel_inception_distance(x, shifted, subsets=20, subset_size=100)
    assert abs(same) < 0.05 * different
    assert different > 0


def test_kid_is_unbiased_so_it_can_go_below_zero():
    estimates = [
        kernel_inception_distance(gaussian(50, 4, seed=s), gaussian(50, 4, seed=100 + s), subsets=1)[0]
        for s in range(20)
    ]
    assert min(estimates) < 0 < max(estimates)


def test_kid_is_deterministic_for_a_seed():
    x, y = gaussian(60, 4, seed=8), gaussian(60, 4, seed=9)
    assert kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=3) == kernel_inception_distance(
        x, y, subsets=5, subset_size=20, seed=3
    )


def test_kid_refuses_sets_of_one_image():
    with pytest.raises(ConfigError, match="at least 2 images"):
        kernel_inception_distance(gaussian(1, 4, seed=0), gaussian(10, 4, seed=1))


@pytest.mark.parametrize("name", ["fd_dinov2", "kid"])
def test_reference_metrics_without_reference_images_say_so(name):
    records = [ImageRecord(Image.new("RGB", (4, 4), (i, 0, 0))) for i in range(3)]
    with pytest.raises(ConfigError, match="needs reference images"):
        get_metric(name).compute(records)
