"""How a LoRA is trained: a dependency-free dataclass, so the command line can show its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from autolora.errors import ConfigError


@dataclass
class LoRATrainingConfig:
    """How a LoRA is trained; the defaults are those of the miniature world's bank."""

    rank: int = 4
    #: LoRA scale is ``alpha / rank``; ``None`` means equal to ``rank`` (scale 1).
    alpha: float | None = None
    steps: int = 500
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LoRA training: {name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"LoRA training: learning_rate must be positive, got {self.learning_rate}")
