import math
import sqlite3
from contextlib import closing

from autolora.experiments.index import RunIndex


def _add(index, key, sha256="0" * 64):
    index.add_image(
        key=key,
        item_index=0,
        config_hash="c",
        params={"variant": "v", "prompt": "p", "seed": 0, "gamma": 1.5},
        path=f"images/{key}.png",
        sha256=sha256,
        versions={"torch": "x"},
        git_revision=None,
        process_index=0,
    )


def test_adding_a_key_twice_keeps_one_row_with_the_latest_file(tmp_path):
    with RunIndex(tmp_path, journal_mode="WAL") as index:
        _add(index, "k1", "a" * 64)
        _add(index, "k1", "b" * 64)
        _add(index, "k2")
        images = index.images()
    assert sorted(images["key"]) == ["k1", "k2"]
    assert images.set_index("key").loc["k1", "sha256"] == "b" * 64


def test_journal_mode_is_set_by_the_creator_and_kept_by_later_connections(tmp_path):
    RunIndex(tmp_path, journal_mode="WAL").close()
    with RunIndex(tmp_path) as index:
        _add(index, "k")
    with closing(sqlite3.connect(tmp_path / "index.sqlite")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    RunIndex(tmp_path, journal_mode="DELETE").close()
    with closing(sqlite3.connect(tmp_path / "index.sqlite")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_stored_metrics_replace_the_previous_ones_and_nan_becomes_null(tmp_path):
    with RunIndex(tmp_path) as index:
        index.store_metrics("f1", [{"key": "k", "cps": 1.0}], [{"prompt": "p", "diversity": 0.3}])
        index.store_metrics("f2", [{"key": "k", "cps": math.nan}], [])
        assert index.metrics_fingerprint() == "f2"
        per_image = index.metrics("image")
        assert index.metrics("group").empty
    assert per_image["key"].tolist() == ["k"] and per_image["cps"].isna().all()
