import math

import pytest
import torch
import torch.nn.functional as F

from autolora.errors import ConfigError
from autolora.metrics import get_metric
from autolora.metrics.diversity import diversity, vendi_score


def naive_diversity(features: torch.Tensor) -> float:
    """Eq. 8 written literally: the mean cosine similarity over the pairs i < j."""
    n = features.shape[0]
    pairs = [
        F.cosine_similarity(features[i].double(), features[j].double(), dim=0)
        for i in range(n)
        for j in range(i + 1, n)
    ]
    return float(1 - 2 / (n * (n - 1)) * torch.stack(pairs).sum())


@pytest.mark.parametrize(("n", "d"), [(2, 3), (7, 5), (16, 64)])
def test_linear_time_diversity_equals_pairwise_formula(n, d):
    features = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) + 0.5
    assert diversity(features) == pytest.approx(naive_diversity(features), abs=1e-12)


def test_diversity_is_zero_for_identical_and_one_for_orthogonal_features():
    assert diversity(torch.ones(4, 3)) == pytest.approx(0, abs=1e-12)
    assert diversity(torch.eye(5)) == pytest.approx(1, abs=1e-12)


def test_diversity_ignores_feature_scale():
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scaled = features * torch.arange(1, 7).unsqueeze(1)
    assert diversity(scaled) == pytest.approx(diversity(features), abs=1e-12)


def test_diversity_of_a_single_image_is_nan():
    assert math.isnan(diversity(torch.randn(1, 4)))


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
def test_vendi_of_identical_images_is_one(q):
    assert vendi_score(torch.ones(8, 5) * 3, q) == pytest.approx(1, abs=1e-9)


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
def test_vendi_of_orthogonal_features_is_their_number(q):
    assert vendi_score(torch.eye(6)[:4] * 2, q) == pytest.approx(4, abs=1e-9)


def test_vendi_is_the_same_whichever_gram_matrix_is_decomposed():
    wide = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))  # n <= d: n x n kernel
    tall = wide.T.contiguous()  # n > d: d x d covariance
    tall_kernel = F.normalize(tall.double(), dim=1) @ F.normalize(tall.double(), dim=1).T
    eigenvalues = torch.linalg.eigvalsh(tall_kernel / tall.shape[0]).clamp(min=1e-300)
    expected = float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))
    assert vendi_score(tall, 1.0) == pytest.approx(expected, rel=1e-9)
    assert 1 <= vendi_score(wide, 1.0) <= 5


def test_vendi_decreases_with_its_order():
    features = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    scores = [vendi_score(features, q) for q in (0.5, 1.0, 2.0, math.inf)]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("q", [0, -1, "two"])
def test_vendi_refuses_orders_that_are_not_positive(q):
    with pytest.raises(ConfigError, match="vendi order q"):
        get_metric("vendi", q=q)
