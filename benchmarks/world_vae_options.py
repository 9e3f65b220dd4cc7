"""Which change to the miniature world's VAE buys reconstruction fidelity: an ablation at equal steps.

Trains the world's VAE stage (``autolora.world.train.train_vae``, same data, seed and schedule) for
``--steps`` steps in four variants, each changing one thing from the previous one: the shipped
architecture (4 latent channels, channels 16-32-32, MSE), 16 latent channels, wider channels
(32-64-64, the new ``components.FULL``), and the edge term in the loss. Prints PSNR on renders of
held-out digits per named style and on unseen random styles, and the CPU seconds of each variant.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/world_vae_options.py --steps 500 --out benchmarks/results/world_vae_options.md
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from autolora.provenance import BenchmarkRun, publish
from autolora.world import components
from autolora.world.fidelity import held_out_renders, psnr, reconstruct
from autolora.world.styles import STYLES, random_style_names
from autolora.world.train import Plan, train_vae
from autolora.world.training import images_to_tensor

SHIPPED = components.Architecture(vae_channels=(16, 32, 32), latent_channels=4)
VARIANTS = {
    "shipped (4 ch, 16-32-32), MSE": (SHIPPED, 0.0),
    "16 latent channels": (replace(SHIPPED, latent_channels=16), 0.0),
    "+ channels 32-64-64 (FULL)": (components.FULL, 0.0),
    "+ edge term 0.5 (the new stage)": (components.FULL, 0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--renders", type=int, default=50, help="held-out renders per style")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    run = BenchmarkRun()
    named = held_out_renders(list(STYLES), args.renders, seed=7000)
    unseen = held_out_renders(random_style_names(range(20)), 10, seed=9000)
    sets = {**named, "random (unseen)": [s for samples in unseen.values() for s in samples]}
    pixels = {name: images_to_tensor([s.image for s in samples]) for name, samples in sets.items()}
    header = f"| variant | CPU s | {' | '.join(pixels)} |"
    lines = [header, "|---" * (len(pixels) + 2) + "|"]
    for label, (architecture, edge_weight) in VARIANTS.items():
        plan = Plan(architecture=architecture, vae_steps=args.steps, vae_edge_weight=edge_weight)
        with tempfile.TemporaryDirectory() as work:
            vae, result = train_vae(Path(work), plan, seed=0)
        vae.eval()
        values = [f"{float(psnr(reconstruct(vae, x), x).mean()):.1f}" for x in pixels.values()]
        lines.append(f"| {label} | {result.cpu_seconds:.0f} | {' | '.join(values)} |")
        print(lines[-1], flush=True)
    title = f"# World VAE options, {args.steps} steps each (PSNR dB on held-out renders)"
    publish("\n".join([title, "", *run.header(), "", *lines]), args.out)


if __name__ == "__main__":
    main()
