"""How a LoRA is trained: a dependency-free dataclass, so the command line can show its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from autolora.checks import at_least, check_bounds, positive


@dataclass
class LoRATrainingConfig:
    """How a LoRA is trained; the defaults are those of the miniature world's bank."""

    rank: int = at_least(4)
    #: LoRA scale is ``alpha / rank``; ``None`` means equal to ``rank`` (scale 1).
    alpha: float | None = None
    steps: int = at_least(500)
    batch_size: int = at_least(8)
    learning_rate: float = positive(2e-3)
    seed: int = 0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __post_init__(self) -> None:
        check_bounds(self, "LoRA training")
