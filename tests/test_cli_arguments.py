import argparse

import pytest

from autolora.cli.arguments import add_key_values, add_loras, add_model, add_prompts, read_prompts
from autolora.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_model(parser, default="world")
    add_loras(parser, "LoRAs", required=False)
    add_prompts(parser)
    add_key_values(parser, "--set", "KEY=VALUE", "an override", dest="overrides")
    return parser


def test_prompts_come_from_the_flags_then_the_file_without_blank_lines(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    args = parser().parse_args(["--prompt", "a fox", "--prompts-file", str(tmp_path / "prompts.txt")])
    assert read_prompts(args) == ["a fox", "a cat", "a dog"]
    assert read_prompts(parser().parse_args([])) == []


def test_a_missing_prompts_file_is_named(tmp_path):
    args = parser().parse_args(["--prompts-file", str(tmp_path / "nowhere.txt")])
    with pytest.raises(ConfigError, match=r"--prompts-file .*nowhere\.txt does not exist"):
        read_prompts(args)


def test_repeatable_options_collect_in_order_and_defaults_apply():
    args = parser().parse_args(["--lora", "a.safetensors", "--lora", "b:0.5", "--set", "x=1", "--set", "y=2"])
    assert (args.model, args.lora, args.overrides) == ("world", ["a.safetensors", "b:0.5"], ["x=1", "y=2"])


def test_a_required_single_lora_is_one_value():
    single = argparse.ArgumentParser(exit_on_error=False)
    add_model(single)
    add_loras(single, "the LoRA", repeat=False)
    args = single.parse_args(["--model", "m", "--lora", "a.safetensors"])
    assert args.lora == "a.safetensors"
    with pytest.raises(SystemExit):  # argparse reports a missing required option and exits
        single.parse_args(["--model", "m"])
