import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from autolora.experiments.config import load_config, parse_config
from autolora.experiments.index import RunIndex
from autolora.experiments.runner import run_sweep
from autolora.images import read_png_params

SRC = Path(__file__).resolve().parents[1] / "src"


def sweep_of(tiny, **changes):
    """A small sweep on the tiny random SD1.5 pipeline: 2 variants x 2 LoRA scales x 2 prompts x 3 seeds."""
    return {
        "name": "test-sweep",
        "model": tiny["model"],
        "loras": [{"source": tiny["lora"]}],
        "prompts": ["a photo of cat", "a painting of dog"],
        "seeds": {"start": 0, "count": 3},
        "generate": {"num_inference_steps": 2, "height": 32, "width": 32},
        "grid": {"lora_scale": [0.5, 1.0]},
        "variants": [
            {"name": "LoRA+CFG", "method": "lora", "cfg": 5.0},
            {"name": "AutoLoRA+CFG", "method": "autolora", "cfg": 5.0, "gamma": 1.5},
        ],
        "batch_size": 2,
        **changes,
    }


N_IMAGES = 2 * 2 * 2 * 3


@pytest.fixture(scope="session")
def tiny(sd15_folder):
    """The shared tiny random SD1.5 pipeline folder and one of its LoRA files."""
    return {"model": str(sd15_folder / "model"), "lora": str(sd15_folder / "style.safetensors")}


@pytest.fixture
def pipeline_loads(monkeypatch):
    """Models passed to ``autolora.load_pipeline`` during the test."""
    import autolora

    loads = []
    load = autolora.load_pipeline

    def counting(model, **kwargs):
        loads.append(model)
        return load(model, **kwargs)

    monkeypatch.setattr(autolora, "load_pipeline", counting)
    return loads


def _rows(run_dir):
    with closing(sqlite3.connect(run_dir / "index.sqlite")) as db:
        return db.execute("SELECT key, path, sha256, item_index, process_index FROM images").fetchall()


def _pngs(run_dir):
    return sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "images").rglob("*.png"))


def test_sweep_writes_one_indexed_png_per_work_item(tmp_path, tiny, pipeline_loads):
    config = parse_config(sweep_of(tiny))
    summary = run_sweep(config, tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert summary.generated == N_IMAGES and summary.skipped == 0
    assert sorted(r[0] for r in rows) == sorted(i.key for i in config.work_items())
    assert sorted(r[1] for r in rows) == _pngs(tmp_path)
    item = config.work_items()[-1]
    params = read_png_params(tmp_path / item.relative_path)
    assert params == json.loads(json.dumps({**item.record(), "key": item.key}))
    assert pipeline_loads == [tiny["model"]]  # one pipeline for the whole sweep


def test_index_records_parameters_versions_and_file_hash(tmp_path, tiny):
    run_sweep(parse_config(sweep_of(tiny)), tmp_path, progress=False)
    with RunIndex(tmp_path) as index:
        images = index.images()
    import hashlib

    first = images.iloc[0]
    assert hashlib.sha256((tmp_path / first["path"]).read_bytes()).hexdigest() == first["sha256"]
    assert {"torch", "diffusers", "autolora"} <= set(json.loads(first["versions"]))
    assert json.loads(first["params"])["cfg_lora"] == 5.0
    assert first["config_hash"] == parse_config(sweep_of(tiny)).hash


def test_batched_and_single_image_runs_give_the_same_images(tmp_path, tiny):
    run_sweep(parse_config(sweep_of(tiny, batch_size=3)), tmp_path / "batched", progress=False)
    run_sweep(parse_config(sweep_of(tiny, batch_size=1)), tmp_path / "single", progress=False)
    assert _pngs(tmp_path / "batched") == _pngs(tmp_path / "single")
    for path in _pngs(tmp_path / "batched"):
        batched = np.asarray(Image.open(tmp_path / "batched" / path), dtype=np.int16)
        single = np.asarray(Image.open(tmp_path / "single" / path), dtype=np.int16)
        # Same seeds, same noise; batched matrix products may round one 8-bit level apart.
        assert np.abs(batched - single).max() <= 1


def test_rerun_skips_finished_images_and_adds_new_seeds(tmp_path, tiny):
    run_sweep(parse_config(sweep_of(tiny)), tmp_path, progress=False)
    again = run_sweep(parse_config(sweep_of(tiny)), tmp_path, progress=False)
    assert again.generated == 0 and again.skipped == N_IMAGES
    more = run_sweep(parse_config(sweep_of(tiny, seeds={"start": 0, "count": 4})), tmp_path, progress=False)
    assert more.generated == N_IMAGES // 3 and more.skipped == N_IMAGES
    assert len(_rows(tmp_path)) == len(_pngs(tmp_path)) == N_IMAGES // 3 * 4


def test_image_written_but_not_indexed_is_indexed_without_regenerating(tmp_path, tiny):
    config = parse_config(sweep_of(tiny))
    run_sweep(config, tmp_path, progress=False)
    lost = config.work_items()[5]
    with closing(sqlite3.connect(tmp_path / "index.sqlite")) as db:
        db.execute("DELETE FROM images WHERE key = ?", (lost.key,))
        db.commit()
    (tmp_path / "images" / ".leftover.png.tmp").write_bytes(b"partial")
    summary = run_sweep(config, tmp_path, progress=False)
    assert summary.generated == 0
    assert len(_rows(tmp_path)) == N_IMAGES
    assert not list((tmp_path / "images").rglob("*.tmp"))


def test_limit_runs_the_first_items_of_the_stable_order(tmp_path, tiny):
    config = parse_config(sweep_of(tiny))
    run_sweep(config, tmp_path, limit=5, progress=False)
    assert sorted(r[3] for r in _rows(tmp_path)) == [0, 1, 2, 3, 4]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}


# A reduced mini-table1 on the miniature world: 4 methods x 2 LoRA scales x SEEDS seeds, 4 steps.
MINI = ["grid.lora_scale=[0.5, 1.0]", "generate.num_inference_steps=4"]


def _mini_sweep_command(run_dir, seeds):
    overrides = [*MINI, f"seeds.count={seeds}"]
    command = ["-m", "autolora", "sweep", "mini-table1", "--out", str(run_dir), "--no-progress"]
    return [*command, *(arg for override in overrides for arg in ("--set", override))]


def _mini_keys(seeds):
    return sorted(
        item.key for item in load_config("mini-table1", [*MINI, f"seeds.count={seeds}"]).work_items()
    )


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_exactly_the_expected_rows_and_files(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, *_mini_sweep_command(run_dir, seeds=8)]
    process = subprocess.Popen(command, env=_env())
    deadline = time.monotonic() + 120
    while (not (run_dir / "images").is_dir() or len(_pngs(run_dir)) < 4) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    expected = _mini_keys(seeds=8)
    assert 4 <= len(_pngs(run_dir)) < len(expected)

    subprocess.run(command, env=_env(), check=True, timeout=300)
    rows = _rows(run_dir)
    assert sorted(r[0] for r in rows) == expected  # every item once: none lost, none twice
    assert sorted(r[1] for r in rows) == _pngs(run_dir)
    assert not list(run_dir.rglob("*.tmp"))
    for _, path, *_ in rows:
        Image.open(run_dir / path).verify()


@pytest.mark.slow
def test_two_processes_split_the_work_without_overlap_into_one_index(tmp_path):
    run_dir = tmp_path / "run"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # torchrun is what `accelerate launch --multi_gpu` runs; on CPU the processes join a gloo group.
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]
    command = [*launch, *_mini_sweep_command(run_dir, seeds=3)]
    done = subprocess.run(command, env=_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(run_dir)
    assert sorted(r[0] for r in rows) == _mini_keys(seeds=3)
    assert {r[4] for r in rows} == {0, 1}
    assert all(item_index % 2 == rank for _, _, _, item_index, rank in rows)
    assert len(_pngs(run_dir)) == len(rows)
    with RunIndex(run_dir) as index:
        assert len(index.metrics("group")) == 4 * 2  # computed once, by the main process, over both shards


@pytest.fixture
def brightness_metric(monkeypatch):
    """A registered image-level metric, and the sizes of the image sets ``evaluate`` is called with."""
    import autolora.metrics
    from autolora.metrics import registry

    class Brightness(registry.Metric):
        name = "brightness"
        level = "image"

        def compute(self, records, *, reference=None, inputs=None):
            return [{"brightness": float(np.asarray(r.image).mean())} for r in records]

    calls = []
    evaluate = autolora.metrics.evaluate

    def counting(records, metrics, **kwargs):
        calls.append(len(records))
        return evaluate(records, metrics, **kwargs)

    monkeypatch.setitem(registry.METRICS._classes, "brightness", Brightness)
    monkeypatch.setattr(autolora.metrics, "evaluate", counting)
    return calls


def test_metrics_are_computed_per_group_stored_and_not_recomputed(tmp_path, tiny, brightness_metric):
    sweep = sweep_of(tiny, metrics={"names": ["brightness"]})
    summary = run_sweep(parse_config(sweep), tmp_path, progress=False)
    assert summary.metrics_computed and brightness_metric == [N_IMAGES]
    with RunIndex(tmp_path) as index:
        per_image, per_group = index.metrics("image"), index.metrics("group")
        keys = set(index.images()["key"])
    assert set(per_image["key"]) == keys and len(per_image) == N_IMAGES
    assert len(per_group) == 2 * 2 * 2  # variant x lora_scale x prompt, each with its 3 seeds
    assert set(per_group["n"]) == {3}
    params = _params_by_key(tmp_path)
    for row in per_group.itertuples():
        members = [
            value
            for key, value in zip(per_image["key"], per_image["brightness"], strict=True)
            if (params[key]["variant"], params[key]["lora_scale"], params[key]["prompt"])
            == (row.variant, row.lora_scale, row.prompt)
        ]
        assert len(members) == 3 and row.brightness == pytest.approx(np.mean(members))
    again = run_sweep(parse_config(sweep), tmp_path, progress=False)
    assert not again.metrics_computed and brightness_metric == [N_IMAGES]


def test_metrics_evaluate_whole_groups_in_bounded_chunks(tmp_path, tiny, brightness_metric, monkeypatch):
    monkeypatch.setattr("autolora.experiments.evaluation._CHUNK_IMAGES", 7)
    run_sweep(parse_config(sweep_of(tiny, metrics={"names": ["brightness"]})), tmp_path, progress=False)
    assert brightness_metric == [6] * 4  # two 3-image groups per call, never a split group
    with RunIndex(tmp_path) as index:
        assert len(index.metrics("group")) == 8 and len(index.metrics("image")) == N_IMAGES


def _params_by_key(run_dir):
    with RunIndex(run_dir) as index:
        images = index.images()
    return {key: json.loads(params) for key, params in zip(images["key"], images["params"], strict=True)}


def test_unknown_metric_fails_before_any_image_is_made(tmp_path, tiny):
    from autolora.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown metric 'sharpnes'"):
        run_sweep(parse_config(sweep_of(tiny, metrics={"names": ["sharpnes"]})), tmp_path, progress=False)
    assert not (tmp_path / "images").exists()


def test_corrupt_lora_of_a_variant_fails_before_any_model_is_loaded(tmp_path, tiny, pipeline_loads):
    from autolora.errors import InputFileError

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header")
    raw = sweep_of(tiny)
    raw["variants"][1]["loras"] = [{"source": str(corrupt)}]
    with pytest.raises(InputFileError, match=r"corrupt\.safetensors"):
        run_sweep(parse_config(raw), tmp_path / "run", progress=False)
    assert pipeline_loads == []


def test_reduced_mini_table1_runs_end_to_end_on_the_world_with_its_metrics_and_report(tmp_path):
    from autolora.cli import main

    overrides = ["seeds.count=3", "grid.lora_scale=[0.5, 1.0]", "generate.num_inference_steps=4"]
    argv = ["sweep", "mini-table1", "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, *(arg for o in overrides for arg in ("--set", o))]) == 0
    with RunIndex(tmp_path) as index:
        assert len(index.images()) == 4 * 2 * 3
        per_group = index.metrics("group")
    assert len(per_group) == 4 * 2 and per_group["diversity"].between(0, 1).all()
    assert per_group["style_score"].between(0, 1).all()
    assert main(["report", str(tmp_path), "--export", "csv"]) == 0
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    diversity = summary[summary.metric == "diversity"].sort_values(["variant", "lora_scale"])
    expected = per_group.sort_values(["variant", "lora_scale"])["diversity"]
    assert diversity["mean"].tolist() == pytest.approx(expected.tolist())


def test_world_metrics_of_a_sweep_are_stored_per_group_and_reported(tmp_path, tiny):
    from autolora.experiments.report import build_report

    metrics = {
        "names": ["diversity", "world:style"],
        "options": {"diversity": {"extractor": "world"}, "world:style": {"style": "character"}},
    }
    run_sweep(parse_config(sweep_of(tiny, metrics=metrics)), tmp_path, progress=False)
    with RunIndex(tmp_path) as index:
        per_group, per_image = index.metrics("group"), index.metrics("image")
    assert len(per_group) == 8 and per_group["diversity"].between(0, 1).all()
    assert len(per_image) == N_IMAGES and per_image["style_score"].between(0, 1).all()
    summary = build_report(tmp_path, ["md"]).summary
    assert set(summary["metric"]) == {"diversity", "style_score"}
    diversity = summary[summary.metric == "diversity"].set_index(["variant", "lora_scale"])["mean"]
    expected = per_group.groupby(["variant", "lora_scale"])["diversity"].mean()
    assert diversity.sort_index().tolist() == pytest.approx(expected.sort_index().tolist())
