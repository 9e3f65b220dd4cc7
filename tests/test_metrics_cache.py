import torch
from PIL import Image

from autolora.metrics import ImageRecord
from autolora.metrics.cache import MetricsCache
from autolora.metrics.features import FeatureExtractor


class Random(FeatureExtractor):
    """Random float32 features, a fresh draw per call: a cache hit is the only way to get the same row twice."""

    name = "test:random"

    def __call__(self, images):
        return torch.randn(len(images), 5)


def records(n: int) -> list[ImageRecord]:
    return [ImageRecord(Image.new("RGB", (2, 2), (i, 0, 0))) for i in range(n)]


def test_features_read_back_from_disk_are_bit_identical(tmp_path):
    first = MetricsCache(tmp_path)
    written = first.features(Random(), records(3))
    first.close()
    torch.testing.assert_close(MetricsCache(tmp_path).features(Random(), records(3)), written, rtol=0, atol=0)


def test_two_open_caches_on_one_folder_see_each_others_entries(tmp_path):
    a, b = MetricsCache(tmp_path), MetricsCache(tmp_path)
    from_a = a.features(Random(), records(2))
    b.put_rows("metric", {"abc": {"score": 1.5}})
    torch.testing.assert_close(b.features(Random(), records(2)), from_a, rtol=0, atol=0)
    assert a.rows("metric", ["abc", "missing"]) == {"abc": {"score": 1.5}}


def test_extractors_with_other_options_do_not_share_features(tmp_path):
    cache = MetricsCache(tmp_path)
    assert not torch.equal(
        cache.features(Random(size=1), records(2)), cache.features(Random(size=2), records(2))
    )


def test_repeated_images_are_extracted_once_and_returned_for_each_record():
    calls = []

    class Counting(Random):
        def __call__(self, images):
            calls.append(len(images))
            return super().__call__(images)

    twice = records(2) * 2
    features = MetricsCache().features(Counting(), twice)
    assert calls == [2]
    torch.testing.assert_close(features[:2], features[2:])
