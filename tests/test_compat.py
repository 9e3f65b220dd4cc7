import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from peft import LoraConfig, inject_adapter_in_model

from autolora import compat
from autolora.branches import BranchSwitcher
from autolora.compat import DependencyError

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def fake_versions(monkeypatch: pytest.MonkeyPatch, **versions: str) -> None:
    """Pretend the given packages (underscores for dashes) are installed at these versions."""
    real = compat.installed_version
    overrides = {name.replace("_", "-"): Version(value) for name, value in versions.items()}
    monkeypatch.setattr(compat, "installed_version", lambda package: overrides.get(package, real(package)))


def lora_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    return inject_adapter_in_model(LoraConfig(target_modules=["0"]), model)


def test_tested_ranges_are_the_ones_pyproject_declares():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    expected = {Requirement(line).name.lower(): Requirement(line).specifier for line in declared}
    assert compat.tested_ranges() == expected


def test_the_installed_core_libraries_are_in_their_tested_ranges():
    assert {package: compat.in_tested_range(package) for package in compat.CORE} == dict.fromkeys(
        compat.CORE, True
    )
    assert compat.known_breaks() == []


def test_an_untested_peft_is_refused_before_its_private_attributes_are_used(monkeypatch):
    fake_versions(monkeypatch, peft="9.0.0")
    with pytest.raises(
        DependencyError, match=r"peft 9\.0\.0 is installed, but autolora is tested with peft.*<"
    ):
        BranchSwitcher([lora_model()])


def test_the_version_check_can_be_skipped_explicitly(monkeypatch):
    fake_versions(monkeypatch, peft="9.0.0")
    monkeypatch.setenv(compat.SKIP_CHECK_ENV, "1")
    assert len(BranchSwitcher([lora_model()]).layers) == 1


def test_a_peft_without_the_private_attributes_is_refused_by_name(monkeypatch):
    model = lora_model()
    layer = model[0]
    del vars(layer)["_disable_adapters"]
    with pytest.raises(DependencyError, match="_disable_adapters"):
        BranchSwitcher([model])


def test_transformers_that_needs_a_newer_peft_is_a_known_break(monkeypatch):
    fake_versions(monkeypatch, transformers="5.24.0", peft="0.21.2")
    assert [text for text in compat.known_breaks() if "peft >= 0.22" in text]
    fake_versions(monkeypatch, transformers="5.24.0", peft="0.22.0")
    assert compat.known_breaks() == []
