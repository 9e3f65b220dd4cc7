import math

import numpy as np

from autolora.stats import format_ci95, format_mean_ci95, mean_ci95, ratio_of_means_ci95


def test_mean_ci95_is_a_reproducible_bootstrap_around_the_mean():
    values = [float(v) for v in range(20)]
    mean, low, high = mean_ci95(values)
    assert mean == 9.5
    # The bootstrap standard error of a mean is sd / sqrt(n) = 1.29; the 95% interval spans about 4 of them.
    assert low < mean < high and 3.5 * 1.29 < high - low < 4.5 * 1.29
    assert mean_ci95(values) == (mean, low, high)
    single = mean_ci95([0.7])
    assert single[0] == 0.7 and math.isnan(single[1]) and math.isnan(single[2])


def test_interval_of_a_bounded_score_stays_in_its_range():
    # Three probabilities: a Student-t interval would run from about -1.0 to 1.5.
    mean, low, high = mean_ci95([0.02, 0.97, 0.25])
    assert 0.02 <= low < mean < high <= 0.97
    assert mean_ci95([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)


def test_missing_values_are_left_out_and_the_text_form_rounds_the_same_interval():
    values = [0.0, 1.0, 0.5, 0.25]
    assert mean_ci95([*values, None, math.nan]) == mean_ci95(values)
    mean, low, high = mean_ci95(np.array(values))
    assert format_mean_ci95(values) == f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    assert low <= 0.4375 <= high


def test_ratio_of_means_resamples_pairs_and_survives_a_near_zero_denominator():
    numerators, denominators = [0.5, 0.6, 0.02, 0.7], [0.7, 0.8, 0.001, 0.9]
    ratio, low, high = ratio_of_means_ci95(numerators, denominators)
    assert ratio == np.mean(numerators) / np.mean(denominators)
    assert low < ratio < high < 1  # the mean of per-pair ratios would be 5.5, carried by the 20x pair
    # Pairs move together: numerators proportional to their denominators give the constant, no spread.
    assert ratio_of_means_ci95([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == (2.0, 2.0, 2.0)
    # A pair missing either value is left out; one pair has no interval.
    assert ratio_of_means_ci95([1.0, math.nan, 3.0], [2.0, 1.0, math.nan])[0] == 0.5
    assert math.isnan(ratio_of_means_ci95([1.0], [2.0])[1])
    assert format_ci95((0.5, 0.25, 0.75), 2) == "0.50 [0.25, 0.75]"
