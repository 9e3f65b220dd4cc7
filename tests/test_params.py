"""GenerationParams is the one declaration of a generation: the API, the CLI and sweeps agree with it."""

import dataclasses

import pytest

from autolora.cli import build_parser
from autolora.cli.generate import generation_params
from autolora.errors import ConfigError
from autolora.experiments.config import GENERATION_KEYS, parse_config
from autolora.params import SWEEP_FIELDS, GenerationParams, cli_args, cli_fields, cli_flag

# One bad value per field a user can set, with the words its error must contain.
BAD_VALUES = {
    "method": ("best", "is not one of"),
    "gamma": (-1.0, "must be >= 0"),
    "gamma_end": (-0.5, "must be >= 0"),
    "interval": ((0.6, 0.3), "0 <= a <= b <= 1"),
    "cfg_base": (0.5, "must be >= 1"),
    "cfg_lora": (0.9, "must be >= 1"),
    "lora_scale": (-0.1, "must be >= 0"),
    "reference": (-2.0, "must be >= 0"),
    "branch_mode": ("parallel", "is not one of"),
    "cache_interval": (0, "must be >= 1"),
    "cache_threshold": (-0.5, "must be >= 0"),
    "cfg_interval": ((5.0, 1.0), "0 <= a <= b"),
    "cads_noise": (-0.1, "must be >= 0"),
    "cads_tau": ((0.6, 1.5), "0 <= a <= b <= 1"),
    "cads_psi": (1.5, r"must lie in \[0, 1\]"),
    "negative_prompt": (3, "must be a string"),
    "num_inference_steps": (0, "must be >= 1"),
    "height": (60, "multiple of 8"),
    "width": (0, "multiple of 8"),
    "seed": (-1, "must be >= 0"),
    "num_images": (0, "must be >= 1"),
}


def test_every_field_has_a_bad_value_case():
    assert set(BAD_VALUES) == {field.name for field in dataclasses.fields(GenerationParams)}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_python_api_refuses_each_bad_value_naming_the_field(name):
    value, message = BAD_VALUES[name]
    with pytest.raises(ConfigError, match=message) as error:
        GenerationParams(**{name: value})
    assert name in str(error.value)


@pytest.mark.parametrize("name", SWEEP_FIELDS)
def test_sweep_refuses_the_same_bad_values_at_load_time(name):
    value, message = BAD_VALUES[name]
    raw = {"name": "t", "model": "m", "prompts": ["a"], "generate": {name: value}}
    with pytest.raises(ConfigError, match=message) as error:
        parse_config(raw)
    assert f"generate.{name}" in str(error.value)


# Every text is a valid negative prompt, so that flag has no bad value.
@pytest.mark.parametrize(
    "field", [f for f in cli_fields() if f.name != "negative_prompt"], ids=lambda field: field.name
)
def test_cli_flag_of_each_field_refuses_the_same_bad_values(field):
    value, message = BAD_VALUES[field.name]
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    argv = ["generate", "--model", "m", "--lora", "l", "--prompt", "p", "--out", "o", cli_flag(field), text]
    if getattr(field.metadata["check"], "choices", None):
        with pytest.raises(SystemExit):  # argparse refuses a value outside the field's choices
            build_parser().parse_args(argv)
        return
    with pytest.raises(ConfigError, match=message) as error:
        generation_params(build_parser().parse_args(argv))
    assert cli_flag(field) in str(error.value)


def test_cli_args_parse_back_to_the_same_params():
    params = GenerationParams(
        method="lora", gamma=1 / 3, gamma_end=2.0, interval=(0.1, 0.8), cfg_base=4.0, reference=0.5,
        branch_mode="sequential", cache_interval=3, cache_threshold=0.05, cfg_interval=(0.28, 5.42),
        cads_noise=0.25, cads_tau=(0.5, 0.95), cads_psi=0.5, negative_prompt="blurry, low quality",
        num_inference_steps=7, height=64, width=48, seed=11, num_images=3,
    )  # fmt: skip
    argv = ["generate", "--model", "m", "--lora", "l", "--prompt", "p", "--out", "o", *cli_args(params)]
    assert generation_params(build_parser().parse_args(argv)) == params
    # Defaults are left out, so a default command line stays short.
    assert cli_args(GenerationParams()) == [] and cli_args(GenerationParams(gamma=2.0)) == ["--gamma", "2"]


def test_cli_args_refuse_a_value_the_cli_cannot_write():
    with pytest.raises(ConfigError, match="--reference"):
        cli_args(GenerationParams(reference={"style": 0.5}))


def test_sweep_keys_are_the_fields_a_sweep_may_set_and_cfg():
    assert set(GENERATION_KEYS) == set(SWEEP_FIELDS) | {"cfg"}
    assert {"seed", "num_images"}.isdisjoint(SWEEP_FIELDS)


def test_values_are_kept_in_canonical_types_so_equal_settings_are_equal():
    assert GenerationParams(gamma=2, interval=[0, 1], cfg_base=5) == GenerationParams(
        gamma=2.0, interval=(0.0, 1.0), cfg_base=5.0
    )


def test_record_leaves_out_what_the_method_ignores():
    params = GenerationParams(method="lora", gamma=2.0, cfg_base=3.0, cfg_lora=4.0, seed=7, num_images=3)
    record = params.record()
    assert record["gamma"] is None and record["cfg_base"] is None and record["interval"] is None
    assert (record["method"], record["cfg_lora"], record["seed"]) == ("lora", 4.0, 7)
    # Image i of a batch equals the single image of seed + i, so no image depends on the batch size.
    assert record["num_images"] is None
    assert GenerationParams(method="base", cfg_lora=4.0).record()["cfg_lora"] is None


def test_from_options_splits_fields_from_pipeline_arguments_and_overrides_a_base():
    base = GenerationParams(gamma=2.0, seed=3)
    params, rest = GenerationParams.from_options({"seed": 5, "output_type": "np"}, base=base)
    assert (params.gamma, params.seed, rest) == (2.0, 5, {"output_type": "np"})
    with pytest.raises(ConfigError, match="seed"):
        GenerationParams.from_options({"seed": -5}, base=base)
