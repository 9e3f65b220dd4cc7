"""``autolora synth``: a LoRA from a few reference images in one prior sample, no training.

Prints the time from images to file, and warns when the images are far from the prior's bank. A PCA
prior (unconditional) makes the LoRA by inversion instead: ``--base`` names the bank's base pipeline.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``synth`` sub-command."""
    parser = subparsers.add_parser(
        "synth", help="synthesise a LoRA from reference images", description=__doc__
    )
    parser.add_argument(
        "--prior", type=Path, required=True, metavar="P", help="prior folder (autolora prior train)"
    )
    parser.add_argument(
        "--ref", type=Path, nargs="+", required=True, metavar="IMAGE", help="reference images"
    )
    parser.add_argument("--out", type=Path, required=True, help="LoRA .safetensors to write")
    parser.add_argument(
        "--samples", type=int, default=1, metavar="K", help="LoRAs to draw (out-0, out-1, ...)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=1.0, help="CFG on the condition (diffusion prior)")
    parser.add_argument(
        "--kohya", action="store_true", help="write kohya keys (A1111, ComfyUI) instead of diffusers"
    )
    inversion = parser.add_argument_group("inversion (a PCA prior: optimise its coefficients on the images)")
    inversion.add_argument(
        "--base", metavar="MODEL", help="the bank's base pipeline (folder, Hub id, 'world')"
    )
    inversion.add_argument("--caption", default="", help="caption of every reference image (default: empty)")
    inversion.add_argument(
        "--fit-steps", type=int, default=200, help="optimisation steps (default: %(default)s)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import warnings

    from autolora.synthesis.prior import load_prior
    from autolora.synthesis.synth import FarConditionWarning, synthesize

    prior = load_prior(args.prior)
    pipe = None
    if not prior.conditional and args.base:
        from autolora.pipelines import load_pipeline

        pipe = load_pipeline(args.base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FarConditionWarning)
        result = synthesize(
            prior,
            args.ref,
            args.out,
            samples=args.samples,
            seed=args.seed,
            guidance=args.guidance,
            kohya=args.kohya,
            pipe=pipe,
            captions=[args.caption] * len(args.ref),
            fit_steps=args.fit_steps,
        )
    for warning in caught:
        if issubclass(warning.category, FarConditionWarning):
            print(f"warning: {warning.message}")
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    names = ", ".join(str(path) for path in result.files)
    print(f"wrote {names} from {len(args.ref)} image(s) in {result.seconds:.3f} s")
    return 0
