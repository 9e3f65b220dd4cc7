"""Bounds on a configuration dataclass's numbers: declared on the field, checked by one call.

Dependency-free, so the dataclasses that use it (``PriorConfig``, ``LoRATrainingConfig``, ...) stay cheap
to import for a command line's defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autolora.errors import ConfigError


def at_least(default: Any, minimum: float = 1) -> Any:
    """A dataclass field whose value must be ``>= minimum`` (a count, by default)."""
    return dataclasses.field(default=default, metadata={"at_least": minimum})


def positive(default: Any) -> Any:
    """A dataclass field whose value must be ``> 0`` (a learning rate, say)."""
    return dataclasses.field(default=default, metadata={"positive": True})


def check_bounds(config: Any, where: str) -> None:
    """Raise ``ConfigError`` for the first field of ``config`` outside the bound it declares; ``where``
    names the configuration in the message."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        minimum = field.metadata.get("at_least")
        if minimum is not None and not value >= minimum:
            raise ConfigError(f"{where}: {field.name} must be at least {minimum:g}, got {value}")
        if field.metadata.get("positive") and not value > 0:
            raise ConfigError(f"{where}: {field.name} must be positive, got {value}")
