import math

import pytest

from autolora.metrics import get_metric

# Table 1 of the AutoLoRA paper ("Anna", Disney princesses LoRA, SDXL): (Diversity, CPS, Div-CPS)
# per LoRA scale (in the comment) for LoRA, AutoLoRA, LoRA+CFG and AutoLoRA+CFG.
TABLE_1 = [
    (0.378, 0.010, 0.004), (0.369, 0.014, 0.005), (0.262, 0.742, 0.195), (0.254, 1.072, 0.273),  # 0.2
    (0.360, 0.016, 0.006), (0.346, 0.029, 0.010), (0.236, 1.863, 0.439), (0.226, 2.906, 0.656),  # 0.3
    (0.346, 0.037, 0.013), (0.333, 0.059, 0.020), (0.218, 3.326, 0.726), (0.209, 3.994, 0.837),  # 0.4
    (0.340, 0.100, 0.034), (0.324, 0.314, 0.102), (0.209, 4.217, 0.880), (0.203, 4.430, 0.898),  # 0.5
    (0.337, 0.152, 0.051), (0.326, 0.771, 0.251), (0.208, 4.467, 0.931), (0.207, 4.723, 0.978),  # 0.6
    (0.337, 0.389, 0.131), (0.329, 1.260, 0.414), (0.214, 4.666, 1.001), (0.214, 4.793, 1.028),  # 0.7
    (0.341, 0.496, 0.169), (0.334, 1.850, 0.618), (0.221, 4.729, 1.047), (0.226, 4.711, 1.064),  # 0.8
    (0.347, 0.543, 0.188), (0.338, 2.115, 0.714), (0.231, 4.674, 1.081), (0.235, 4.703, 1.104),  # 0.9
    (0.357, 0.693, 0.247), (0.345, 1.998, 0.689), (0.243, 4.543, 1.103), (0.248, 4.631, 1.148),  # 1.0
    (0.369, 0.650, 0.240), (0.355, 1.803, 0.641), (0.255, 4.535, 1.155), (0.256, 4.529, 1.159),  # 1.1
    (0.383, 0.582, 0.223), (0.367, 1.492, 0.548), (0.265, 4.311, 1.143), (0.265, 4.283, 1.134),  # 1.2
    (0.401, 0.463, 0.185), (0.381, 1.115, 0.425), (0.283, 3.975, 1.124), (0.282, 3.914, 1.102),  # 1.3
]  # fmt: skip

# Table 2: (Diversity, PC, SA, Div-PC, Div-SA) for SD3 CFG, SD3 AutoLoRA, SDXL CFG, SDXL AutoLoRA.
TABLE_2 = [
    (0.136, 3.985, 4.177, 0.540, 0.566),
    (0.197, 3.725, 4.019, 0.734, 0.792),
    (0.159, 3.846, 4.144, 0.611, 0.658),
    (0.170, 3.756, 4.150, 0.637, 0.704),
]


def rounding_bound(diversity: float, score: float) -> float:
    """Largest error of a product of two values printed with 3 decimals, itself printed with 3."""
    return 0.0005 * (diversity + score + 1) + 0.0005**2


def test_div_cps_reproduces_every_row_of_table_1():
    # One multiplication checked 48 times is one property: every printed row within rounding.
    for diversity, cps, div_cps in TABLE_1:
        inputs = {"diversity": {"diversity": diversity}, "judge:cps": {"cps": cps, "cps_n_failed": 0}}
        [row] = get_metric("div_cps").compute([], inputs=inputs)
        assert row["div_cps"] == pytest.approx(div_cps, abs=rounding_bound(diversity, cps)), (diversity, cps)


def test_div_pc_and_div_sa_reproduce_every_row_of_table_2():
    for diversity, pc, sa, div_pc, div_sa in TABLE_2:
        inputs = {"diversity": {"diversity": diversity}, "judge:pc_sa": {"pc": pc, "sa": sa}}
        [row_pc] = get_metric("div_pc").compute([], inputs=inputs)
        [row_sa] = get_metric("div_sa").compute([], inputs=inputs)
        assert row_pc["div_pc"] == pytest.approx(div_pc, abs=rounding_bound(diversity, pc))
        assert row_sa["div_sa"] == pytest.approx(div_sa, abs=rounding_bound(diversity, sa))


@pytest.mark.parametrize("name", ["div_cps", "div_pc", "div_sa"])
def test_a_product_needs_exactly_the_results_it_declares(name):
    """evaluate() hands a metric the results named in ``requires``; the product must read only those."""
    metric = get_metric(name)
    given = {
        "diversity": {"diversity": 0.5},
        "judge:cps": {"cps": 2.0},
        "judge:pc_sa": {"pc": 3.0, "sa": 4.0},
    }
    [row] = metric.compute([], inputs={required: given[required] for required in metric.requires})
    assert row[name] in (1.0, 1.5, 2.0)
    for missing in metric.requires:
        with pytest.raises(KeyError):
            metric.compute([], inputs={r: given[r] for r in metric.requires if r != missing})


def test_product_of_a_group_without_any_parsed_judge_reply_is_nan():
    inputs = {"diversity": {"diversity": 0.3}, "judge:cps": {"cps": math.nan, "cps_n_failed": 4}}
    assert math.isnan(get_metric("div_cps").compute([], inputs=inputs)[0]["div_cps"])
