import dataclasses

import pytest

from autolora.errors import ConfigError, InputFileError
from autolora.experiments.config import apply_override, available_presets, load_config, parse_config

BASE = {
    "name": "t",
    "model": "some/model",
    "prompts": ["a cat"],
    "seeds": {"start": 0, "count": 2},
    "loras": [{"source": "l.safetensors"}],
}


def _with(**changes):
    return {**BASE, **changes}


def _lora_overrides(name):
    """Overrides that give every LoRA left empty in a preset (the civitai ones)."""
    return ["loras.0.source=lora.safetensors"] if name.startswith("paper-") else []


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_validates(name):
    config = load_config(name, _lora_overrides(name))
    assert config.name == name
    assert config.work_items()


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_names_registered_metrics_with_accepted_options(name):
    from autolora.experiments.runner import check_metrics

    check_metrics(load_config(name, _lora_overrides(name)))


def test_paper_presets_each_have_a_miniature_world_twin():
    presets = set(available_presets())
    paper = {p.removeprefix("paper-") for p in presets if p.startswith("paper-")}
    assert {"table1", "fig1", "fig2", "fig3", "fig4", "fig5", "table2"} <= paper
    assert paper <= {p.removeprefix("mini-") for p in presets if p.startswith("mini-")}


def test_paper_table1_is_four_methods_by_twelve_scales_by_512_images():
    config = load_config("paper-table1", _lora_overrides("paper-table1"))
    items = config.work_items()
    assert len(items) == 4 * 12 * 512
    assert [v.name for v in config.variants] == ["LoRA", "AutoLoRA", "LoRA+CFG", "AutoLoRA+CFG"]
    assert config.grid["lora_scale"] == pytest.approx([0.2 + 0.1 * i for i in range(12)])
    # The LoRA method ignores the base branch's CFG scale, so its images do not record one.
    assert {(i.params["method"], i.params.get("cfg_base"), i.params["cfg_lora"]) for i in items} == {
        ("lora", None, 1.0),
        ("autolora", 1.0, 1.0),
        ("lora", None, 5.0),
        ("autolora", 5.0, 5.0),
    }
    assert config.metrics.names == ["diversity", "judge:cps", "div_cps"]


def test_paper_table2_uses_the_same_seeds_for_all_four_settings():
    config = load_config("paper-table2", _lora_overrides("paper-table2"))
    items = config.work_items()
    assert len(config.prompts) == 30 and len(items) == 4 * 30 * 16
    seeds = {v.name: {i.seed for i in items if i.variant == v.name} for v in config.variants}
    assert len({frozenset(s) for s in seeds.values()}) == 1
    assert {i.model for i in items} == {
        "stabilityai/stable-diffusion-xl-base-1.0",
        "stabilityai/stable-diffusion-3-medium-diffusers",
    }


def test_gamma_grid_makes_plain_lora_images_once():
    config = parse_config(
        _with(
            grid={"gamma": [1.5, 1.75, 2.0]},
            variants=[{"name": "CFG", "method": "lora", "cfg": 5.0}, {"name": "Auto", "method": "autolora"}],
        )
    )
    items = config.work_items()
    assert sum(i.variant == "CFG" for i in items) == 2
    assert sum(i.variant == "Auto" for i in items) == 3 * 2
    assert len({i.key for i in items}) == len(items)
    assert [i.index for i in items] == list(range(len(items)))


def test_work_item_keys_are_stable_and_depend_on_every_parameter():
    first = parse_config(_with(grid={"lora_scale": [0.5, 1.0]})).work_items()
    again = parse_config(_with(grid={"lora_scale": [0.5, 1.0]})).work_items()
    assert [i.key for i in first] == [i.key for i in again]
    assert len({i.key for i in first}) == 4
    other_model = parse_config(_with(model="other/model", grid={"lora_scale": [0.5, 1.0]})).work_items()
    assert not {i.key for i in first} & {i.key for i in other_model}


def test_delta_cache_options_are_sweep_keys_used_by_autolora_only():
    config = parse_config(
        _with(
            grid={"cache_interval": [2, 3]},
            variants=[
                {"name": "CFG", "method": "lora"},
                {"name": "Auto", "method": "autolora", "cache_threshold": 0.3},
            ],
        )
    )
    items = config.work_items()
    assert sum(i.variant == "CFG" for i in items) == 2  # LoRA+CFG images do not depend on the cache
    auto = [i.params for i in items if i.variant == "Auto"]
    assert sorted(p["cache_interval"] for p in auto) == [2, 2, 3, 3]
    assert all(p["cache_threshold"] == 0.3 for p in auto)


def test_cfg_sets_both_guidance_scales():
    (item, *_) = parse_config(_with(generate={"cfg": 3.0})).work_items()
    assert item.params["cfg_base"] == item.params["cfg_lora"] == 3.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with(gird={"gamma": [1.0]}), "unknown key(s) gird"),
        (_with(grid={"gamma": []}), "grid.gamma: expected a non-empty list"),
        (_with(grid={"gamma": [-1.0]}), "grid.gamma must be >= 0"),
        (_with(generate={"method": "cfg++"}), "generate.method: 'cfg++' is not one of autolora, lora, base"),
        (_with(generate={"num_inference_steps": 2.5}), "generate.num_inference_steps must be an integer"),
        (
            _with(generate={"branch_mode": "fused"}),
            "generate.branch_mode: 'fused' is not one of batched, sequential",
        ),
        (_with(grid={"reference": [[0.5]]}), "grid.reference must be 'base', a LoRA scale >= 0 or a table"),
        (_with(generate={"interval": [0.8, 0.2]}), "generate.interval must satisfy 0 <= a <= b <= 1"),
        (_with(generate={"cfg": 0.5}), "generate.cfg must be >= 1"),
        (_with(grid={"cfg_lora": [5.0, 0.5]}), "grid.cfg_lora must be >= 1"),
        (_with(generate={"height": 64}), "height and width must be given together"),
        (_with(generate={"cfg": 5.0}, grid={"cfg_base": [1.0]}), "'cfg' sets both guidance scales"),
        (_with(seeds={"start": 0, "count": 0}), "seeds.count: expected a positive integer"),
        (_with(seeds=[1, 1]), "seeds: repeated seeds"),
        (_with(torch_dtype="float8"), "torch_dtype: 'float8' is not one of"),
        (_with(loras=[{"source": ""}]), "--set loras.0.source=PATH_OR_HUB_ID"),
        (_with(variants=[{"name": "a", "loras": [{"source": ""}]}]), "--set variants.0.loras.0.source="),
        (_with(variants=[{"name": "a"}, {"name": "a"}]), "variants: names must be unique"),
        (_with(variants=[{"name": "a", "gama": 2}]), "variants[0]: unknown key(s) gama"),
        (
            _with(metrics={"names": ["diversity"], "options": {"vendi": {}}}),
            "metrics.options: unknown key(s) vendi",
        ),
        ({k: v for k, v in BASE.items() if k != "model"}, "missing required key 'model'"),
        ({k: v for k, v in BASE.items() if k != "prompts"}, "exactly one of 'prompts'"),
        (_with(batch_size=0), "batch_size: expected a positive integer"),
        (
            _with(metrics={"group_by": ["variant", "lora_scal"]}),
            "metrics.group_by: unknown field(s) lora_scal",
        ),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_overrides_are_read_as_toml_values():
    raw = {"loras": [{"source": "a"}], "seeds": {"count": 2}}
    apply_override(raw, "loras.0.source=/tmp/x.safetensors")
    apply_override(raw, "seeds.count=8")
    apply_override(raw, "grid.lora_scale=[0.5, 1.0]")
    assert raw == {
        "loras": [{"source": "/tmp/x.safetensors"}],
        "seeds": {"count": 8},
        "grid": {"lora_scale": [0.5, 1.0]},
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seeds", "expected KEY=VALUE"),
        ("loras.3.source=x", "loras has no item '3'"),
        ("name.x=1", "is a value"),
    ],
)
def test_bad_override_names_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_override({"name": "n", "loras": [{"source": "a"}]}, override)


def test_yaml_and_toml_files_give_the_same_sweep(tmp_path):
    (tmp_path / "s.toml").write_text(
        'name = "t"\nmodel = "m"\nprompts = ["a"]\nseeds = [0, 1]\n[grid]\nlora_scale = [0.5, 1.0]\n'
    )
    (tmp_path / "s.yaml").write_text(
        "name: t\nmodel: m\nprompts: [a]\nseeds: [0, 1]\ngrid:\n  lora_scale: [0.5, 1.0]\n"
    )
    assert load_config(tmp_path / "s.toml").hash == load_config(tmp_path / "s.yaml").hash


def test_prompts_file_is_read_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\n")
    (tmp_path / "s.toml").write_text('name = "t"\nmodel = "m"\nprompts_file = "prompts.txt"\n')
    assert load_config(tmp_path / "s.toml").prompts == ["a cat", "a dog"]


def test_missing_sweep_file_and_unknown_preset_are_reported(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="neither a sweep file nor a preset"):
        load_config("paper-table9")


def test_config_hash_changes_with_the_config():
    assert parse_config(BASE).hash == parse_config(dict(BASE)).hash
    assert parse_config(BASE).hash != parse_config(_with(seeds=[0, 1, 2])).hash
    assert dataclasses.asdict(parse_config(BASE)) == parse_config(BASE).to_dict()


def test_each_variant_sweeps_its_own_grid():
    raw = _with(
        grid={"lora_scale": [1.0]},
        variants=[
            {"name": "LoRA+CFG", "method": "lora", "grid": {"cfg": [1.0, 4.0], "lora_scale": [0.5, 1.0]}},
            {"name": "AutoLoRA", "method": "autolora", "grid": {"gamma": [0.5, 1.5, 2.5]}},
        ],
    )
    config = parse_config(raw)
    points = {
        (i.variant, i.params.get("cfg"), i.params["lora_scale"], i.params.get("gamma"))
        for i in config.work_items()
    }
    assert {(c, s) for v, c, s, _ in points if v == "LoRA+CFG"} == {
        (1.0, 0.5),
        (1.0, 1.0),
        (4.0, 0.5),
        (4.0, 1.0),
    }
    # The AutoLoRA variant keeps the sweep's lora_scale list and adds its gammas.
    assert {(s, g) for v, _, s, g in points if v == "AutoLoRA"} == {(1.0, 0.5), (1.0, 1.5), (1.0, 2.5)}
    assert len(config.work_items()) == (4 + 3) * 2
    assert config.swept_keys() == ["cfg", "lora_scale", "gamma"]


def test_variant_grid_values_are_checked():
    raw = _with(variants=[{"name": "x", "method": "lora", "grid": {"cads_noise": [-1.0]}}])
    with pytest.raises(ConfigError, match=r"variants\[0\].grid.cads_noise must be >= 0"):
        parse_config(raw)


def test_baseline_keys_are_dropped_for_autolora_and_checked():
    raw = _with(grid={"cads_noise": [0.1, 0.5]}, variants=[{"name": "A", "method": "autolora"}])
    assert len(parse_config(raw).work_items()) == 2  # one image per seed, not per noise scale
    for key, value, message in [
        ("cfg_interval", [5.0, 1.0], "cfg_interval must satisfy 0 <= a <= b"),
        ("cads_tau", [0.6, 1.5], "cads_tau must satisfy 0 <= a <= b <= 1"),
        ("cads_psi", 2.0, r"cads_psi must lie in \[0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(_with(generate={"method": "lora", key: value}))
