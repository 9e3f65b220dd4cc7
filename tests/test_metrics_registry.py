import pytest
from PIL import Image

from autolora.errors import ConfigError
from autolora.metrics.registry import ImageRecord, Metric, available_metrics, get_metric, register_metric


@register_metric("test:mean-red")
class MeanRed(Metric):
    level = "image"

    def compute(self, records, *, reference=None, inputs=None):
        return [{"mean_red": sum(r.image.getpixel((0, 0))[:1]) / 255} for r in records]


def test_registered_metric_is_listed_and_computes():
    assert "test:mean-red" in available_metrics()
    rows = get_metric("test:mean-red").compute([ImageRecord(Image.new("RGB", (2, 2), (255, 0, 0)))])
    assert rows == [{"mean_red": 1.0}]


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown metric 'nope'.*test:mean-red"):
        get_metric("nope")


def test_registering_a_second_class_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_metric("test:mean-red")(type("Other", (MeanRed,), {}))


def test_record_hash_depends_on_pixels_only():
    a = ImageRecord(Image.new("RGB", (2, 2), "red"), meta={"seed": 1})
    b = ImageRecord(Image.new("RGB", (2, 2), "red"), meta={"seed": 2})
    c = ImageRecord(Image.new("RGB", (2, 2), "blue"))
    assert a.sha256 == b.sha256 != c.sha256


def test_extractor_registry_validates_names_and_ids_record_options():
    import torch

    from autolora.metrics.features import FeatureExtractor, get_extractor, register_extractor

    @register_extractor("test:ones")
    class Ones(FeatureExtractor):
        def __call__(self, images):
            return torch.ones(len(images), 3)

    extractor = get_extractor("test:ones", size=4)
    assert extractor.id == 'test:ones:{"size": 4}'
    assert extractor([Image.new("RGB", (2, 2))] * 2).shape == (2, 3)
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        get_extractor("missing")
