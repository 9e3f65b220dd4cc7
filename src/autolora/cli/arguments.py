"""Arguments several sub-commands share, declared once: the model, its LoRAs, where it runs, prompts,
``KEY=VALUE`` options and the progress bar. Not a sub-command itself."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autolora.devices import DTYPES
from autolora.errors import ConfigError

MODEL_HELP = "diffusers pipeline folder, Hub id, or 'world' for the miniature world"
LORA_SOURCES = "a .safetensors file, folder, Hub id or world:NAME"


def add_model(parser: Any, default: str | None = None) -> None:
    """``--model``: required unless ``default`` is given."""
    suffix = " (default: %(default)s)" if default is not None else ""
    parser.add_argument("--model", required=default is None, default=default, help=MODEL_HELP + suffix)


def add_loras(parser: Any, help: str, *, repeat: bool = True, required: bool = True) -> None:
    """``--lora FILE[:SCALE]``, once or (``repeat``) a list of them; ``help`` says what they are for."""
    repeated = {"action": "append", "default": None if required else []} if repeat else {}
    parser.add_argument("--lora", required=required, metavar="FILE[:SCALE]", help=help, **repeated)


def add_device(parser: Any, default_help: str = "cuda if available, else cpu", dtype: bool = True) -> None:
    """``--device`` and, with ``dtype``, ``--dtype``."""
    parser.add_argument(
        "--device", default=None, help=f"torch device, e.g. cpu or cuda:1 (default: {default_help})"
    )
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default=None, help="weights dtype (default: float32)")


def add_allow_pickle(parser: Any) -> None:
    """``--allow-pickle``: pickle LoRA files run code when loaded."""
    help = "allow pickle LoRA files (.bin/.pt/.pth/.ckpt), which can run code: only for files you trust"
    parser.add_argument("--allow-pickle", action="store_true", help=help)


def add_prompts(parser: Any, help: str = "a prompt (repeatable)") -> None:
    """``--prompt`` (repeatable) and ``--prompts-file`` (one prompt a line); ``read_prompts`` joins them."""
    parser.add_argument("--prompt", action="append", default=[], help=help)
    parser.add_argument("--prompts-file", type=Path, help="a file with one prompt a line")


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The ``--prompt`` values, then the non-empty lines of ``--prompts-file``."""
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise ConfigError(f"--prompts-file {args.prompts_file} does not exist")
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    return prompts


def add_key_values(parser: Any, flag: str, metavar: str, help: str, dest: str | None = None) -> None:
    """A repeatable ``flag KEY=VALUE`` option, collected as a list of strings."""
    parser.add_argument(flag, dest=dest, action="append", default=[], metavar=metavar, help=help)


def add_no_progress(parser: Any) -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
