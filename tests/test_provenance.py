"""The provenance every result and benchmark report carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolora.provenance import VERSIONED, BenchmarkRun, git_revision, package_versions, publish


def test_benchmark_header_names_command_machine_and_every_versioned_package() -> None:
    header = BenchmarkRun(["benchmarks/example.py", "--steps", "3 4"]).header()
    assert [line.split(":", 1)[0] for line in header] == [
        "- date",
        "- machine",
        "- load average (1, 5, 15 min)",
        "- command",
        "- versions",
    ]
    assert "`python benchmarks/example.py --steps '3 4'`" in header[3]
    versions = package_versions()
    assert all(f"{name} {versions[name]}" in header[4] for name in VERSIONED)


def test_benchmark_run_keeps_the_load_and_revision_of_its_start() -> None:
    run = BenchmarkRun(["x"], start_load="9.00, 8.00, 7.00", revision="abc123")
    assert "9.00, 8.00, 7.00 at the start" in run.header()[2]
    assert run.header()[3].endswith("revision abc123")
    assert BenchmarkRun(["x"]).revision == git_revision()


def test_publish_prints_and_writes_one_trailing_newline(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results" / "report.md"
    publish("# Report\n\n| a |\n\n", out)
    assert out.read_text() == "# Report\n\n| a |\n"
    assert capsys.readouterr().out == "# Report\n\n| a |\n"
    publish("# Only printed", None)
    assert capsys.readouterr().out == "# Only printed\n"
