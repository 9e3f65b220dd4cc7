from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from autolora.branches import BASE_ADAPTER, BranchSwitcher, adapter_scales, lora_layers
from autolora.errors import ConfigError


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def _model_with_adapters(*names):
    torch.manual_seed(0)
    model = TwoLayers()
    for name in names:
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["first", "second"], init_lora_weights=False)
        model = inject_adapter_in_model(config, model, adapter_name=name)
    for layer in lora_layers([model]):
        layer.set_adapter(list(names))
    return model.eval()


def _outputs(model, x, names, scales):
    """Reference outputs through peft's own API: set_adapter / set_scale / enable_adapters."""
    layers = lora_layers([model])
    for layer in layers:
        layer.enable_adapters(bool(names))
        if names:
            layer.set_adapter(names)
        for name, scale in scales.items():
            layer.set_scale(name, scale)
    return model(x)


def test_collects_every_lora_layer():
    assert len(lora_layers([_model_with_adapters("a")])) == 2


def test_apply_matches_peft_adapter_api():
    model = _model_with_adapters("a", "b")
    x = torch.randn(3, 8)
    for branch in ({}, {"a": 1.0}, {"b": 0.5}, {"a": 0.3, "b": 2.0}):
        switcher = BranchSwitcher([model])
        switcher.apply(branch)
        with torch.no_grad():
            ours = model(x)
            switcher.restore()
            theirs = _outputs(model, x, list(branch), branch)
        assert torch.equal(ours, theirs), branch


def test_restore_returns_active_adapters_scales_and_enabled_flag():
    model = _model_with_adapters("a", "b")
    for layer in lora_layers([model]):
        layer.set_adapter(["a"])
        layer.set_scale("a", 0.7)
        layer.enable_adapters(False)
    state = [
        (layer.active_adapters, dict(layer.scaling), layer.disable_adapters) for layer in lora_layers([model])
    ]
    switcher = BranchSwitcher([model])
    switcher.apply({"a": 2.0, "b": None})
    switcher.restore()
    assert [
        (layer.active_adapters, dict(layer.scaling), layer.disable_adapters) for layer in lora_layers([model])
    ] == state


def test_none_scale_keeps_the_users_scale():
    model = _model_with_adapters("a")
    for layer in lora_layers([model]):
        layer.set_scale("a", 0.25)
    switcher = BranchSwitcher([model])
    switcher.apply({"a": 3.0})
    switcher.apply({"a": None})
    assert all(layer.scaling["a"] == 0.25 * 4 / 2 for layer in lora_layers([model]))


def test_mixed_batch_rows_equal_separate_branches():
    model = _model_with_adapters("a", "b")
    x = torch.randn(4, 8)
    switcher = BranchSwitcher([model])
    with torch.no_grad():
        switcher.apply({})
        base = model(x[:2])
        switcher.apply({"a": 1.0})
        lora = model(x[2:])
        switcher.apply({"b": 0.5})
        other = model(x[2:])
        switcher.apply({"a": 1.0, "b": 0.5})
        with switcher.mixed_batch([BASE_ADAPTER] * 2 + ["a"] * 2):
            mixed = model(x)
        with switcher.mixed_batch(["b"] * 2 + ["a"] * 2):
            mixed_adapters = model(torch.cat([x[2:], x[2:]]))
    assert torch.allclose(mixed, torch.cat([base, lora]), atol=1e-6)
    assert torch.allclose(mixed_adapters, torch.cat([other, lora]), atol=1e-6)
    assert model(x).shape == (4, 8)  # the hooks are gone: a plain call works again


def test_adapter_scales_reads_back_set_scale():
    model = _model_with_adapters("a", "b")
    for layer in lora_layers([model]):
        layer.set_scale("a", 0.6)
        layer.set_scale("b", 1.4)

    assert adapter_scales(SimpleNamespace(components={"model": model})) == pytest.approx({"a": 0.6, "b": 1.4})


def test_fused_lora_raises_config_error():
    model = _model_with_adapters("a")
    for layer in lora_layers([model]):
        layer.merge()
    with pytest.raises(ConfigError, match="fused"):
        BranchSwitcher([model])
