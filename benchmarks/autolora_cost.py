"""What each cheaper AutoLoRA costs in time and in images, measured side by side on the miniature world.

One command, three tables:

1. delta drift: how fast the AutoLoRA correction ``delta = cfg_lora - cfg_base`` changes between neighbouring
   denoising steps, next to how fast the LoRA branch's own prediction changes;
2. our own overhead: ``generate`` against the pipeline's own ``__call__`` at equal denoiser evaluations;
3. the cost table: for LoRA+CFG, full AutoLoRA (sequential, batched), interval, cached deltas (k = 2, 3, 5,
   adaptive) and the distilled LoRA, the wall time per image relative to LoRA+CFG (every prompt runs every
   method in turn, so load changes of a shared machine fall on all alike), denoiser calls and batch rows per
   image, the world metrics (diversity, style score, digit score) with 95 % bootstrap intervals over prompts,
   and the mean pixel distance to full AutoLoRA's image from the same noise.

    PYTHONPATH=src python benchmarks/autolora_cost.py --out benchmarks/results/autolora_cost_world.md

The distilled LoRAs are trained first (``autolora.distill``, resumable in ``--work``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from guidance_speed import metered

from autolora import generate, load_lora, load_pipeline
from autolora.distill import DistillConfig, distill
from autolora.guidance import cfg
from autolora.metrics.diversity import diversity
from autolora.provenance import BenchmarkRun, publish
from autolora.stats import format_mean_ci95
from autolora.world.assets import WORLD_CFG, lora_info
from autolora.world.evaluators import load_evaluators
from autolora.world.study import style_loras
from autolora.world.styles import DIGIT_NAMES

FULL = "AutoLoRA batched"
REFERENCE = "LoRA+CFG"
DISTILLED = "distilled LoRA"
ADAPTIVE_THRESHOLD = 0.3
VARIANTS: dict[str, dict[str, Any]] = {
    REFERENCE: {"method": "lora"},
    "AutoLoRA sequential": {"branch_mode": "sequential"},
    FULL: {},
    "interval 0,0.5": {"interval": (0.0, 0.5)},
    "cached k=2": {"cache_interval": 2},
    "cached k=3": {"cache_interval": 3},
    "cached k=5": {"cache_interval": 5},
    f"cached adaptive ({ADAPTIVE_THRESHOLD}, k<=5)": {
        "cache_interval": 5,
        "cache_threshold": ADAPTIVE_THRESHOLD,
    },
    DISTILLED: {"method": "lora"},
}
SECTIONS = ("drift", "overhead", "cost")
METRICS = ("diversity", "style_score", "digit_score", "pixel_distance")


# ---------------------------------------------------------------------------------------------
# 1. How fast the delta changes between steps
# ---------------------------------------------------------------------------------------------


def delta_drift(pipe: Any, prompts: list[str], args: argparse.Namespace) -> list[dict[str, float]]:
    """Per step, mean over prompts: relative L1 change of delta and of cfg_lora from the previous step.

    Sequential full AutoLoRA evaluates the reference branch, then the LoRA branch, each one call over
    [uncond, cond] rows; a hook on the UNet's output layer sees both (the pipeline's own calls do not
    reach the UNet's layers: the guidance hook answers them).
    """
    outputs: list[torch.Tensor] = []
    handle = pipe.unet.conv_out.register_forward_hook(lambda m, a, out: outputs.append(out.detach()))
    per_step: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    try:
        for prompt in prompts:
            outputs.clear()
            generate(pipe, prompt, branch_mode="sequential", **_common(args))
            deltas, loras = [], []
            for reference, lora in zip(outputs[0::2], outputs[1::2], strict=True):
                eps_base, eps_lora = (cfg(*rows.chunk(2), WORLD_CFG) for rows in (reference, lora))
                deltas.append(eps_lora - eps_base)
                loras.append(eps_lora)
            for step in range(1, len(deltas)):
                stats = per_step[step]
                stats["delta change"].append(_relative(deltas[step], deltas[step - 1]))
                stats["delta change over 3 steps"].append(
                    _relative(deltas[step], deltas[step - 3]) if step >= 3 else float("nan")
                )
                stats["cfg_lora change"].append(_relative(loras[step], loras[step - 1]))
                stats["delta size / cfg_lora size"].append(
                    float(deltas[step].abs().mean() / loras[step].abs().mean())
                )
    finally:
        handle.remove()
    return [
        {"step": step, **{k: float(np.mean(v)) for k, v in stats.items()}} for step, stats in per_step.items()
    ]


def _relative(current: torch.Tensor, previous: torch.Tensor) -> float:
    return float((current - previous).abs().mean() / previous.abs().mean())


# ---------------------------------------------------------------------------------------------
# 2. Our own overhead against the pipeline's own call
# ---------------------------------------------------------------------------------------------


def overhead(pipe: Any, prompt: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per image, medians over repeats: wall seconds, CPU seconds, wall seconds outside the UNet, UNet rows.

    CPU seconds (``time.process_time``, with one torch thread) are the steadier clock on a shared machine:
    they do not count the time other processes hold the cores.
    """
    common = _common(args)

    def own_call() -> None:
        generators = [torch.Generator("cpu").manual_seed(args.seed + i) for i in range(args.images)]
        pipe(
            prompt,
            guidance_scale=WORLD_CFG,
            num_inference_steps=args.steps,
            num_images_per_prompt=args.images,
            generator=generators,
        )

    runs: dict[str, Callable[[], Any]] = {
        "pipeline's own __call__ (LoRA+CFG)": own_call,
        'generate(method="lora")': lambda: generate(pipe, prompt, method="lora", **common),
        "generate(gamma=1)": lambda: generate(pipe, prompt, gamma=1.0, **common),
        "generate, hook installed, no step guided (interval 0.99,1)": lambda: generate(
            pipe, prompt, interval=(0.99, 1.0), **common
        ),
        "generate(gamma=1.5), full AutoLoRA batched": lambda: generate(pipe, prompt, **common),
    }
    pipe.set_progress_bar_config(disable=True)
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(args.overhead_repeats):
        for name, run in runs.items():
            with metered(pipe.unet, lambda: None) as meter:
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            sample = samples[name]
            sample["seconds"].append(wall / args.images)
            sample["cpu_seconds"].append(cpu / args.images)
            sample["outside"].append((wall - meter.seconds) / args.images)
            sample["rows"].append(meter.rows / args.images)
    return {
        name: {key: statistics.median(v) for key, v in sample.items()} for name, sample in samples.items()
    }


# ---------------------------------------------------------------------------------------------
# 3. The cost table
# ---------------------------------------------------------------------------------------------


def distilled_loras(names: list[str], args: argparse.Namespace) -> dict[str, Path]:
    """One distilled student per LoRA (trained, or resumed, in ``args.work``)."""
    students = {}
    for name in names:
        out = args.work / f"{name}-distilled.safetensors"
        if not out.exists():
            pipe = load_pipeline("world")
            load_lora(pipe, f"world:{name}")
            info = lora_info(name)
            config = DistillConfig(
                prompts=tuple(f"a {word} in {info.trigger} style" for word in DIGIT_NAMES),
                gamma=args.gamma,
                cfg_base=WORLD_CFG,
                cfg_lora=WORLD_CFG,
                num_inference_steps=args.steps,
                steps=args.distill_steps,
            )
            start = time.perf_counter()
            result = distill(pipe, out, config, work=args.work / f"{name}.work")
            print(
                f"distilled {name}: {result.steps} steps, loss {result.final_loss:.5f}, "
                f"{time.perf_counter() - start:.0f} s here, {result.wall_seconds:.0f} s in training",
                file=sys.stderr,
                flush=True,
            )
        students[name] = out
    return students


def cost_table(names: list[str], args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], int]:
    """Every prompt through every variant in turn: time, UNet calls/rows, metrics, distance to full AutoLoRA."""
    evaluators = load_evaluators()
    students = distilled_loras(names, args)
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = {}
    rows: dict[str, int] = {}
    metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    prompts = 0
    for name in names:
        info = lora_info(name)
        pipe = load_pipeline("world")
        load_lora(pipe, f"world:{name}")
        student = load_pipeline("world")
        load_lora(student, str(students[name]))
        for digit in args.digits:
            prompt = f"a {DIGIT_NAMES[digit]} in {info.trigger} style"
            images = {}
            for variant, options in VARIANTS.items():
                target = student if variant == DISTILLED else pipe
                with metered(target.unet, lambda: None) as meter:
                    start = time.perf_counter()
                    images[variant] = generate(target, prompt, gamma=args.gamma, **options, **_common(args))
                    seconds[variant] += time.perf_counter() - start
                calls[variant], rows[variant] = meter.calls, meter.rows // args.images
            full = _pixels(images[FULL])
            for variant, batch in images.items():
                style = evaluators.style_probabilities(batch)[:, evaluators.styles.index(info.style)]
                metrics[variant]["diversity"].append(diversity(evaluators.features(batch)))
                metrics[variant]["style_score"].append(float(style.mean()))
                metrics[variant]["digit_score"].append(
                    float(evaluators.digit_probabilities(batch)[:, digit].mean())
                )
                metrics[variant]["pixel_distance"].append(float(np.abs(_pixels(batch) - full).mean()))
            prompts += 1
            print(f"{prompt}: done ({prompts} prompts)", file=sys.stderr, flush=True)
    table = {
        variant: {
            "seconds": seconds[variant] / (prompts * args.images),
            "calls": calls[variant],
            "rows": rows[variant],
            **{metric: np.asarray(metrics[variant][metric]) for metric in METRICS},
        }
        for variant in VARIANTS
    }
    return table, prompts


def _pixels(images: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cfg_base": WORLD_CFG,
        "cfg_lora": WORLD_CFG,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "num_images": args.images,
        "progress": False,
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def report(
    drift: list[dict[str, float]] | None,
    own: dict[str, dict[str, float]] | None,
    table: dict[str, dict[str, Any]] | None,
    prompts: int,
    args: argparse.Namespace,
    run: BenchmarkRun,
) -> str:
    """The provenance and the tables of the sections that were measured."""
    lines = [
        *run.header(),
        f"- setup: miniature world, LoRAs {', '.join(args.loras)}, digits {args.digits}, "
        f"{args.images} images per prompt (seeds {args.seed}..{args.seed + args.images - 1}), {args.steps} steps, "
        f"gamma {args.gamma}, CFG {WORLD_CFG} in both branches",
    ]
    if table is not None:
        lines[-1] += (
            f"; {prompts} prompts; distilled LoRAs: {args.distill_steps} training steps on the teacher's "
            "trajectories of the LoRA's ten digit prompts (seeds 1000..1003)"
        )
    if drift is not None:
        columns = list(drift[0])
        lines += [
            "",
            "### Delta drift between neighbouring steps (relative L1, mean over prompts)",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---:|" * len(columns),
            *("| " + " | ".join(f"{row[c]:.3g}" for c in columns) + " |" for row in drift),
        ]
    if own is not None:
        own_call = next(iter(own.values()))
        lines += [
            "",
            f"### Our own overhead ({args.images} images, {args.steps} steps, median of {args.overhead_repeats})",
            "",
            "| run | s / image | x own call | CPU s / image | x own call (CPU) | s / image outside the UNet "
            "| UNet rows / image |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {name} | {m['seconds']:.4f} | {m['seconds'] / own_call['seconds']:.3f} | {m['cpu_seconds']:.4f} "
                f"| {m['cpu_seconds'] / own_call['cpu_seconds']:.3f} | {m['outside']:.4f} | {m['rows']:.0f} |"
                for name, m in own.items()
            ),
        ]
    if table is not None:
        lines += _cost_lines(table, args.images)
    return "\n".join(lines)


def _cost_lines(table: dict[str, dict[str, Any]], images: int) -> list[str]:
    ref = table[REFERENCE]
    lines = [
        "",
        "### Cost in time and in images",
        "",
        f"| method | x LoRA+CFG (time) | UNet calls / {images} images | UNet rows / image | diversity | style score "
        "| digit score | pixel distance to full AutoLoRA |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for variant, row in table.items():
        lines.append(
            f"| {variant} | {row['seconds'] / ref['seconds']:.2f} | {row['calls']} | {row['rows']} | "
            + " | ".join(format_mean_ci95(row[metric]) for metric in METRICS)
            + " |"
        )
    lines.append("")
    lines.append(f"LoRA+CFG: {ref['seconds']:.4f} s per image. Intervals: 95 % bootstrap over prompts.")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    styles = style_loras()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", nargs="+", default=styles, help="world LoRAs (default: every style LoRA)")
    parser.add_argument("--digits", nargs="+", type=int, default=[0, 2, 3, 5, 7])
    parser.add_argument("--images", type=int, default=8, help="images per prompt (default: 8)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--gamma", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill-steps", type=int, default=DistillConfig.steps)
    parser.add_argument("--overhead-repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("autolora-cost-work"), help="distilled LoRAs")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this Markdown file")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to measure (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    run = BenchmarkRun(["benchmarks/autolora_cost.py", *argv])
    pipe = load_pipeline("world")
    load_lora(pipe, f"world:{args.loras[0]}")
    prompts = [f"a {DIGIT_NAMES[d]} in {lora_info(args.loras[0]).trigger} style" for d in args.digits]
    drift = delta_drift(pipe, prompts, args) if "drift" in args.sections else None
    own = overhead(pipe, prompts[0], args) if "overhead" in args.sections else None
    table, count = cost_table(args.loras, args) if "cost" in args.sections else (None, 0)
    args.work.mkdir(parents=True, exist_ok=True)
    # The raw measurements, so that the report can be written again without measuring again.
    torch.save({"drift": drift, "own": own, "table": table, "prompts": count}, args.work / "measurements.pt")
    publish(report(drift, own, table, count, args, run), args.out)


if __name__ == "__main__":
    main()
