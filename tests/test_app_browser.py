"""``autolora app`` driven in a real browser: Chromium through Playwright, on a free loopback port.

The page is served on 127.0.0.1 only and the browser aborts any request that leaves it. Outside CI the test
skips when Chromium or Playwright is missing; in CI (``CI=true``) it must run.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from autolora.cli.demo import DEFAULT_LORA
from autolora.world.assets import lora_info

CHROMIUM = os.environ.get("AUTOLORA_CHROMIUM", "/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
# Headless, and nothing that reaches out to the network on its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 300_000  # 2 cores shared with other jobs: generous, the test waits for events, not time


def _requirements_or_skip() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    for module in ("playwright", "gradio"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI must run it")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``autolora app`` started as a user starts it, on a free port of 127.0.0.1; stopped at the end."""
    _requirements_or_skip()
    from app_fixtures import world_prior

    port = _free_port()
    out = tmp_path_factory.mktemp("app-out")
    prior = world_prior(tmp_path_factory.mktemp("prior"))
    command = [sys.executable, "-m", "autolora", "app", "--port", str(port), "--out", str(out)]
    command += ["--prior", str(prior)]
    log = (out / "server.log").open("w+")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"autolora app exited with status {server.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


@pytest.fixture
def page(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 1000},
        )
        blocked: list[str] = []

        def loopback_only(route, request) -> None:
            if urlparse(request.url).hostname in ("127.0.0.1", "localhost") or request.url.startswith(
                "data:"
            ):
                route.continue_()
            else:
                blocked.append(request.url)
                route.abort()

        context.route("**/*", loopback_only)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url)
        yield page
        context.close()
    assert not blocked, f"the page tried to reach beyond 127.0.0.1: {blocked}"


def _set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Tab")


def _column(page, method: str, seeds: list[int]) -> list[np.ndarray]:
    """The images of one column once it shows ``seeds``, as pixels, checking each carries its parameters."""
    gallery = page.locator(f"#gallery-{method}")
    for seed in seeds:
        gallery.get_by_text(f"seed {seed}", exact=True).wait_for()
    images = []
    for source in gallery.locator("img").evaluate_all("images => images.map(image => image.src)"):
        data = page.request.get(source).body()
        with Image.open(io.BytesIO(data)) as image:
            # The downloaded file carries the CLI's PNG metadata.
            assert json.loads(image.text["autolora"])["method"] == method
            images.append(np.asarray(image.convert("RGB")))
    assert len(images) == len(seeds)
    return images


def _screenshot(page, tmp_path: Path, name: str) -> None:
    """The whole page, saved as docs/images/NAME."""
    page.screenshot(path=str(tmp_path / name), full_page=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / name, IMAGES / name)


def _metrics(page) -> list[list[str]]:
    """The metrics table's body, once its three rows are there."""
    table = page.locator("#metrics")
    table.get_by_text("AutoLoRA", exact=True).wait_for()
    return [row.inner_text().split() for row in table.locator("[role=row]").all()[1:]]


def test_the_app_compares_three_columns_from_the_same_noise_in_chromium(page, tmp_path):
    # 1. Fill the prompt, move the gamma slider, keep the run small, generate.
    page.locator("#prompt textarea").fill(f"a seven in {lora_info(DEFAULT_LORA).trigger} style")
    page.locator("#gamma input[type=range]").fill("2")
    _set_number(page, "steps", "6")
    _set_number(page, "num-images", "2")
    page.locator("#generate").click()

    # 2. All three columns arrive; the methods differ from the same noise; the metrics are numbers.
    columns = {method: _column(page, method, [0, 1]) for method in ("base", "lora", "autolora")}
    assert not np.array_equal(columns["base"][0], columns["lora"][0])
    assert not np.array_equal(columns["lora"][0], columns["autolora"][0])
    table = _metrics(page)
    assert [" ".join(row[:-3]) for row in table] == ["Base CFG", "LoRA + CFG", "AutoLoRA"]
    assert all(math.isfinite(float(cell)) for row in table for cell in row[-3:])
    command = page.locator("#command textarea").input_value()
    assert (
        command.startswith(f"autolora generate --model world --lora world:{DEFAULT_LORA}:1")
        and "--gamma 2 " in command
    )
    _screenshot(page, tmp_path, "app.png")

    # 3. Seeds 1 and 2: seed 1 repeats, and its images are identical to the first run's in every column.
    _set_number(page, "seed", "1")
    page.locator("#generate").click()
    for method, first in columns.items():
        again = _column(page, method, [1, 2])
        assert np.array_equal(again[0], first[1])

    # 4. A garbage LoRA upload is an error message on the page, not a crash.
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a LoRA")
    page.locator("#lora-upload input[type=file]").set_input_files(str(garbage))
    page.locator("#lora-status").get_by_text("corrupt or unreadable safetensors").wait_for()


def test_the_tune_tab_finds_a_front_and_hands_a_setting_to_compare(page, tmp_path):
    # 1. A tiny search: 2 trials of 2 seeds at 4 steps (the Compare tab's steps).
    _set_number(page, "steps", "4")
    page.get_by_role("tab", name="Tune").click()
    _set_number(page, "tune-trials", "2")
    _set_number(page, "tune-seeds", "2")
    page.locator("#tune-run").click()

    # 2. The recommendation, and a table of the trials whose diversity and adherence are numbers.
    status = page.locator("#tune-status")
    status.get_by_text("Recommended: trial").wait_for()
    table = page.locator("#tune-front")
    header, *rows = [row.inner_text() for row in table.locator("[role=row]").all()]
    header = [name.strip() for name in header.split("\n") if name.strip()]
    rows = [dict(zip(header, row.split("\n"), strict=True)) for row in rows]
    assert len(rows) == 2 and {row["trial"] for row in rows} == {"0", "1"}
    assert all(math.isfinite(float(row[name])) for row in rows for name in ("diversity", "adherence"))
    page.locator("#tune-files").get_by_text("tuned.toml").wait_for()
    _screenshot(page, tmp_path, "app-tune.png")

    # 3. Use this setting: the Compare tab's controls show the recommended setting.
    words = status.inner_text().split(", ")[1].split(":")[0].split()  # "AutoLoRA gamma=1.94 ..."
    controls = {"gamma": "gamma", "cfg_base": "cfg-base", "cfg_lora": "cfg-lora", "lora_scale": "lora-scale"}
    settings = dict(word.split("=") for word in words if "=" in word)
    expected = {controls[key]: float(value) for key, value in settings.items() if key in controls}
    assert {"cfg-lora", "lora-scale"} <= set(expected)
    page.locator("#tune-use").click()
    for elem_id, value in expected.items():
        page.wait_for_function(
            "([id, value]) => Number(document.querySelector(`#${id} input[type=number]`).value) === value",
            arg=[elem_id, value],
        )


def test_the_make_a_lora_tab_synthesises_a_lora_that_compare_offers(page, tmp_path):
    from app_fixtures import reference_images

    page.get_by_role("tab", name="Make a LoRA").click()
    page.locator("#make-prior").get_by_text("diffusion, base model").wait_for()
    refs = reference_images(tmp_path / "refs", 7)
    page.locator("#make-images input[type=file]").set_input_files([str(path) for path in refs])
    page.locator("#make-name textarea").fill("my-style")
    page.locator("#make-run").click()
    page.locator("#make-status").get_by_text("Made my-style-").wait_for()
    page.locator("#make-file a[download]").first.wait_for()
    _screenshot(page, tmp_path, "app-make.png")
    page.get_by_role("tab", name="Compare").click()
    assert "my-style-" in page.locator("#lora input").input_value()
