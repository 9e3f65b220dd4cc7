"""``autolora app``: a local web app comparing base CFG, LoRA+CFG and AutoLoRA from the same noise.

With no arguments it serves the miniature world with its LoRAs on http://127.0.0.1:7860. Every option is
checked, and every ``--lora`` loaded, before the server starts, so a bad file is an error here, not a page;
more LoRAs can be uploaded in the page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolora.cli.arguments import LORA_SOURCES, add_allow_pickle, add_device, add_loras, add_model
from autolora.cli.generate import parse_lora_spec
from autolora.errors import ConfigError

DEFAULT_PORT = 7860  # Gradio's


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``app`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "app", help="open the web app: base CFG, LoRA+CFG and AutoLoRA side by side", description=__doc__
    )
    add_model(parser, default="world")
    add_loras(
        parser,
        f"LoRA to offer ({LORA_SOURCES}); repeat for several. The world's LoRAs are always offered on the "
        "world; others can be uploaded in the page",
        required=False,
    )
    add_allow_pickle(parser)
    add_device(parser)
    parser.add_argument(
        "--features",
        default=None,
        metavar="NAME",
        help="feature extractor of the diversity metric (default: world on the world, else dinov2)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the PNGs (default: a temporary one)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the options, load the model and LoRAs, and serve the app until interrupted."""
    from autolora.cli.generate import _check_device
    from autolora.lora import check_lora_source

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} must be between 1 and 65535")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    if args.device is not None:
        _check_device(args.device)
    if args.features is not None:
        from autolora.metrics import available_extractors

        if args.features not in available_extractors():
            raise ConfigError(
                f"--features {args.features}: unknown; known: {', '.join(available_extractors())}"
            )
    specs = [parse_lora_spec(text, 1.0) for text in args.lora]
    for spec in specs:
        check_lora_source(spec.source, allow_pickle=args.allow_pickle)

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("autolora app needs Gradio: pip install 'autolora[app]'") from None
    from autolora import load_pipeline
    from autolora.app.engine import Engine
    from autolora.app.ui import launch
    from autolora.devices import default_device

    pipe = load_pipeline(args.model, torch_dtype=args.dtype, device=args.device or default_device())
    engine = Engine(
        pipe,
        model=args.model,
        out=args.out,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        features=args.features,
    )
    for spec in specs:
        engine.add_lora(spec.source, scale=spec.scale)
    launch(engine, host=args.host, port=args.port, share=args.share)
    return 0
