"""LoRA synthesis on a world-shaped bank: build time, prior training time, images-to-file time.

The miniature world ships 8 LoRAs (7 styles and a character), too few for a prior, so the bank is
made as ethansmith2000/AutoLoRADiscovery makes synthetic training LoRAs: random mixtures of them
(Dirichlet weights, the mixed update ``Σ w_i B_i A_i`` written as one LoRA of stacked factors).
Each mixture's reference images are world renders whose styles are drawn with the mixture's weights;
the condition encoder is the world's style classifier (its logits), registered as ``world-style``.

Measured: bank build, prior training (wall, CPU), and ``synthesize`` from k = 1, 4, 8 held-out
renders of each pure style to a LoRA file (median and range of ``--repeats`` runs). As a check that
the result follows its condition, the synthesised LoRA of each style's renders is compared with the
8 shipped LoRAs (cosine of the canonical vectors): is the nearest the style's own?

    PYTHONPATH=src nice python benchmarks/synthesis_speed.py --work /tmp/synth-bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from autolora.provenance import BenchmarkRun, publish
from autolora.synthesis.bank import Bank, build_bank
from autolora.synthesis.canonical import lora_vector, read_lora_modules
from autolora.synthesis.conditions import register_encoder
from autolora.synthesis.config import PriorConfig
from autolora.synthesis.prior import load_prior
from autolora.synthesis.synth import synthesize
from autolora.synthesis.training import train_prior
from autolora.world.assets import lora_info, lora_path
from autolora.world.evaluators import load_evaluators
from autolora.world.styles import STYLES, sample_style


class WorldStyleEncoder:
    """The world's style classifier logits as a condition embedding."""

    def __init__(self, spec: str, model: str) -> None:
        self.spec, self.evaluators = spec, load_evaluators()

    @torch.no_grad()
    def embed(self, images):
        return self.evaluators.style(self.evaluators.pixels(images))


register_encoder("world-style", WorldStyleEncoder)


def world_loras() -> list[str]:
    """The world's LoRA of each named style: no format twins, no training-length checkpoints."""
    return [name for name, style in STYLES.items() if style.kind != "base"]


def make_mixtures(folder: Path, count: int, refs: int, seed: int) -> None:
    """``count`` mixture LoRAs of the world's LoRAs, each with ``refs`` reference renders."""
    names = world_loras()
    modules = {name: read_lora_modules(lora_path(name)) for name in names}
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"mix{index:04d}.safetensors"
        if path.exists() and (folder / path.stem).is_dir():
            continue
        weights = rng.dirichlet(np.full(len(names), 0.3))
        state = {}
        for module in modules[names[0]]:
            a = torch.cat([float(w) * modules[n][module][0] for w, n in zip(weights, names, strict=True)])
            b = torch.cat([modules[n][module][1] for n in names], dim=1)
            state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = a, b
        styles = rng.choice(len(names), size=refs, p=weights)
        (folder / path.stem).mkdir(exist_ok=True)
        for k, style in enumerate(styles):
            info = lora_info(names[style])
            sample_style(info.style, 1, seed * 100_000 + index * 100 + k)[0].image.save(
                folder / path.stem / f"{k}.png"
            )
        save_file(state, str(path))


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("synth-bench"))
    parser.add_argument("--loras", type=int, default=300)
    parser.add_argument("--refs", type=int, default=4, help="reference renders per bank LoRA")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--prior-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthesis_speed_cpu.md"))
    args = parser.parse_args()
    run = BenchmarkRun()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    # 1. A bank of mixtures of the world's LoRAs, with reference renders.
    _, make_s, _ = timed(lambda: make_mixtures(args.work / "loras", args.loras, args.refs, seed=0))
    bank, bank_s, _ = timed(
        lambda: build_bank(
            args.work / "loras", "world", args.rank, args.work / "bank", encoder="world-style:logits"
        )
    )
    # 2. Priors (resumable: a rerun continues from the checkpoints in the work folder); the first
    #    trains the LoRA VAE, the others reuse it, so they differ only in their latent model.
    rows, priors = [], {}
    steps = {"vae_steps": args.vae_steps, "prior_steps": args.prior_steps}
    for name, config in {
        "regressor": PriorConfig(kind="regressor", **steps),
        "diffusion-hyperada": PriorConfig(kind="diffusion", conditioning="hyperada", **steps),
        "diffusion-adanorm": PriorConfig(kind="diffusion", conditioning="adanorm", **steps),
    }.items():
        folder = args.work / "priors" / name
        if not (folder / "prior.json").exists():
            vae = priors.get("regressor")
            _, wall, cpu = timed(
                lambda c=config, f=folder, v=vae: train_prior(bank, c, f, log=print, vae_from=v)
            )
            (folder / "timing.json").write_text(json.dumps({"wall": wall, "cpu": cpu}))
        priors[name] = load_prior(folder)
        timing = json.loads((folder / "timing.json").read_text())
        rows.append((name, timing["wall"], timing["cpu"]))
    # 3. Images -> file, and whether the result is nearest to the style's own shipped LoRA.
    names = world_loras()
    shipped = torch.stack([lora_vector(bank.layout, read_lora_modules(lora_path(n))) for n in names])
    shipped = torch.nn.functional.normalize(bank.normalize(shipped), dim=-1)
    speed, nearest = [], []
    for name, prior in priors.items():
        for k in (1, 4, 8):
            times, cpu_times, hits = [], [], 0
            for style_index, lora in enumerate(names):
                refs = [
                    s.image
                    for s in sample_style(lora_info(lora).style, k, 777 + style_index, split="held_out")
                ]
                for repeat in range(args.repeats):
                    cpu = time.process_time()
                    result = synthesize(
                        prior, refs, args.work / "out" / f"{name}-{lora}-{k}.safetensors", seed=repeat
                    )
                    times.append(result.seconds)
                    cpu_times.append(time.process_time() - cpu)
                vector = bank.normalize(prior.generate(prior_condition(prior, refs), 1, seed=0))[0]
                hits += int(
                    torch.argmax(shipped @ torch.nn.functional.normalize(vector, dim=0)) == style_index
                )
            speed.append(
                (name, k, statistics.median(times), min(times), max(times), statistics.median(cpu_times))
            )
            nearest.append((name, k, hits, len(names)))
    write_report(run, args, rows, make_s, bank_s, bank, speed, nearest)


def prior_condition(prior, refs):
    from autolora.synthesis.conditions import condition_of, load_encoder

    return condition_of(load_encoder(prior.encoder), refs)


def write_report(run: BenchmarkRun, args, rows, make_s, bank_s, bank: Bank, speed, nearest) -> None:
    lines = [
        "# LoRA synthesis on a world-shaped bank (CPU)",
        "",
        *run.header(),
        f"- bank: {len(bank)} mixtures of the world's {len(world_loras())} LoRAs, rank {bank.layout.rank}, "
        f"{bank.layout.dim} floats per LoRA, {len(bank.layout.segments)} segments; making the LoRAs and "
        f"renders {make_s:.0f} s, `build_bank` {bank_s:.1f} s",
        "",
        "| prior | training wall s | training CPU s |",
        "|---|---:|---:|",
        *[f"| {n} | {w:.0f} | {c:.0f} |" for n, w, c in rows],
        "",
        "Images to LoRA file (`synthesize`: encode, sample, write), seconds over 8 styles x "
        f"{args.repeats} seeds (wall time on a shared machine; CPU time of the process, which also counts the "
        "encoder's call and loading of its cached weights):",
        "",
        "| prior | k images | median wall s | min wall s | max wall s | median CPU s |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {n} | {k} | {m:.3f} | {lo:.3f} | {hi:.3f} | {c:.3f} |" for n, k, m, lo, hi, c in speed],
        "",
        "Nearest shipped LoRA (cosine, normalised canonical vectors) of the LoRA synthesised from k held-out "
        "renders of each style is that style's own:",
        "",
        "| prior | k images | styles matched |",
        "|---|---:|---:|",
        *[f"| {n} | {k} | {h}/{t} |" for n, k, h, t in nearest],
        "",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
