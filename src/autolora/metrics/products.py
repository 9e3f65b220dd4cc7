"""The paper's combined metrics (Sec. 5.1): group diversity times the group's mean VLM judge score.

Div-CPS = Diversity x CPS, Div-PC = Diversity x PC, Div-SA = Diversity x SA. The judge scores
come in as per-group means over the images whose reply parsed (failures are counted by the
evaluation layer, never scored 0), so a group with no parsed reply gets NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from autolora.metrics.registry import ImageRecord, Metric, register_metric


class DiversityProduct(Metric):
    """Group diversity (Eq. 8) times the group mean of the judge column ``score``."""

    level = "group"
    judge: ClassVar[str]
    score: ClassVar[str]

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        if inputs is None:
            raise ValueError(
                f"{self.name} combines the results of {', '.join(self.requires)}; pass them as inputs"
            )
        return [{self.name: inputs["diversity"]["diversity"] * inputs[self.judge][self.score]}]


@register_metric("div_cps")
class DivCPS(DiversityProduct):
    """Div-CPS: diversity x mean Character Presence Score (0-5)."""

    requires = ("diversity", "judge:cps")
    judge, score = "judge:cps", "cps"


@register_metric("div_pc")
class DivPC(DiversityProduct):
    """Div-PC: diversity x mean Prompt Correspondence (0-5)."""

    requires = ("diversity", "judge:pc_sa")
    judge, score = "judge:pc_sa", "pc"


@register_metric("div_sa")
class DivSA(DiversityProduct):
    """Div-SA: diversity x mean Style Adherence (0-5)."""

    requires = ("diversity", "judge:pc_sa")
    judge, score = "judge:pc_sa", "sa"
