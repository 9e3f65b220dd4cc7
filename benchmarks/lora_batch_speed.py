"""World LoRA training: CPU time per LoRA step, one LoRA at a time against groups trained side by side.

``autolora world train-bank --together N`` stacks ``N`` LoRAs into one UNet batch
(``autolora.world.lora_batch``). This trains the world LoRA of random styles for ``--steps`` steps
alone (``train_lora``, peft's adapter) and in groups of each size of ``--groups``
(``train_lora_batch``), and prints the CPU seconds per LoRA step and the speed-up over training alone.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/lora_batch_speed.py \
        --out benchmarks/results/lora_batch_speed_cpu.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from diffusers import StableDiffusionPipeline

from autolora.provenance import BenchmarkRun, publish
from autolora.world.assets import base_pipeline_path
from autolora.world.lora import train_lora
from autolora.world.lora_batch import train_lora_batch
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import random_style_names, sample_style


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="LoRAs per group")
    parser.add_argument("--images", type=int, default=24, help="renders per LoRA (the bank's default)")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args()
    run = BenchmarkRun()
    pipeline = StableDiffusionPipeline.from_pretrained(str(base_pipeline_path()), safety_checker=None)
    config = LoRATrainingConfig(steps=args.steps, seed=0)
    data = {}
    for name in random_style_names(range(max(args.groups))):
        samples = sample_style(name, args.images, 0)
        data[name] = ([s.image for s in samples], [s.caption for s in samples])
    names = list(data)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        alone = train_lora(pipeline, *data[names[0]], Path(work) / "alone.safetensors", config)
        per_step_alone = alone.cpu_seconds / args.steps
        rows.append(f"| alone (peft) | 1 | {per_step_alone:.3f} | 1.00 |")
        for size in args.groups:
            group = names[:size]
            result = train_lora_batch(
                pipeline,
                [data[name] for name in group],
                [Path(work) / f"{name}.safetensors" for name in group],
                [config] * size,
            )
            per_step = result.cpu_seconds / (args.steps * size)
            rows.append(f"| together | {size} | {per_step:.3f} | {per_step_alone / per_step:.2f} |")
    lines = [
        "# World LoRA training: one at a time or side by side",
        "",
        *run.header(),
        f"- the world's UNet, rank {config.rank}, batch {config.batch_size} per LoRA, {args.steps} steps per run",
        "",
        "| training | LoRAs | CPU s per LoRA step | speed-up |",
        "|---|---:|---:|---:|",
        *rows,
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
