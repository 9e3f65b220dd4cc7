"""Evaluation of generated images: diversity (Eq. 8), Vendi, FD, KID, CLIP score, VLM judges and
their products, behind one ``evaluate`` call.

Importing this package registers the built-in metrics and feature extractors; plugins
(``autolora.sources``, e.g. the miniature world) add theirs on the first lookup of a name.
"""

from autolora.metrics import alignment, distribution, diversity, judge, products
from autolora.metrics.evaluate import EvaluationResult, evaluate, load_records
from autolora.metrics.features import available_extractors, get_extractor, register_extractor
from autolora.metrics.registry import ImageRecord, Metric, available_metrics, get_metric, register_metric

__all__ = [
    "EvaluationResult",
    "ImageRecord",
    "Metric",
    "alignment",
    "available_extractors",
    "available_metrics",
    "distribution",
    "diversity",
    "evaluate",
    "get_extractor",
    "get_metric",
    "judge",
    "load_records",
    "products",
    "register_extractor",
    "register_metric",
]
