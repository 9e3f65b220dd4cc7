import json

from test_compat import fake_versions

from autolora import compat
from autolora.cli import main


def test_doctor_reports_versions_ranges_and_a_working_world(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for package in compat.CORE:
        assert f"- {package}: {compat.installed_version(package)} (tested: " in out
    assert "- miniature world: loads and denoises" in out
    assert out.rstrip().endswith("No known problems.")


def test_doctor_fails_and_names_an_out_of_range_version(monkeypatch, capsys):
    fake_versions(monkeypatch, transformers="5.24.0")
    assert main(["doctor", "--skip-world"]) == 1
    out = capsys.readouterr().out
    assert "- transformers: 5.24.0 (tested: <5.24,>=4.45) OUTSIDE TESTED RANGE" in out
    assert "PROBLEM: transformers 5.24.0 is outside the tested range <5.24,>=4.45" in out
    assert "PROBLEM: transformers >= 5.24 loads LoRA text-encoder weights only with peft >= 0.22" in out


def test_doctor_json_names_a_missing_library(monkeypatch, capsys):
    real = compat.installed_version
    monkeypatch.setattr(
        compat, "installed_version", lambda package: None if package == "peft" else real(package)
    )
    assert main(["doctor", "--skip-world", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["libraries"]["peft"] == {"version": None, "tested": "<0.22,>=0.15", "in_range": None}
    assert report["libraries"]["diffusers"]["version"] == str(real("diffusers"))
    assert "world" not in report
