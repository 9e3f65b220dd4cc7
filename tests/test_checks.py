from dataclasses import dataclass

import pytest

from autolora.checks import at_least, check_bounds, positive
from autolora.errors import ConfigError


@dataclass
class Config:
    count: int = at_least(4)
    layers: int = at_least(2, minimum=0)
    rate: float = positive(1e-3)
    free: float = -1.0

    def __post_init__(self) -> None:
        check_bounds(self, "test config")


def test_values_on_their_bounds_pass_and_undeclared_fields_are_free():
    assert Config(count=1, layers=0, rate=1e-9, free=-5.0).count == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": 0}, "test config: count must be at least 1, got 0"),
        ({"layers": -1}, "test config: layers must be at least 0, got -1"),
        ({"rate": 0.0}, "test config: rate must be positive, got 0.0"),
        ({"rate": float("nan")}, "test config: rate must be positive, got nan"),
    ],
)
def test_a_value_outside_its_declared_bound_is_named(values, message):
    with pytest.raises(ConfigError) as error:
        Config(**values)
    assert str(error.value) == message
