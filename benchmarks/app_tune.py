"""How long the app's Tune tab takes with its defaults on the miniature world (CPU).

The search is the page's default (4 trials of 4 seeds of the Compare tab's prompt, at its 20 steps),
run through ``Engine.tune_request`` / ``Engine.tune`` as the page runs it, on one loaded pipeline. The first
run of a process also loads the world's evaluators; each run starts a new study (its own optimiser seed).

    PYTHONPATH=src nice python benchmarks/app_tune.py --out benchmarks/results/app_tune_world.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from autolora import load_pipeline
from autolora.app.engine import Engine, TuneControls
from autolora.provenance import BenchmarkRun, publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", default="world:neon")
    parser.add_argument("--prompt", default="a seven in neon style")
    parser.add_argument("--steps", type=int, default=20, help="the Compare tab's steps on the world")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the table here too")
    args = parser.parse_args()
    run = BenchmarkRun()

    engine = Engine(load_pipeline("world"), model="world", out=Path(tempfile.mkdtemp(prefix="app-tune-")))
    defaults = TuneControls(lora=args.lora, prompts=(args.prompt,))
    rows = []
    for run in range(args.repeats):
        controls = TuneControls(
            lora=args.lora, prompts=(args.prompt,), num_inference_steps=args.steps, sampler_seed=run
        )
        wall, cpu = time.perf_counter(), time.process_time()
        result = engine.tune(engine.tune_request(controls))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append((run, len(result.trials), int(result.trials["images"].sum()), wall, cpu))

    lines = [
        "# The app's Tune tab with its defaults on the miniature world (CPU)",
        "",
        *run.header(),
        f"- search: {defaults.trials} trials x {defaults.seeds} seeds of {args.prompt!r} with {args.lora},"
        f" {args.steps} steps; run 0 also loads the world's evaluators",
        "",
        "| run | trials | images | wall s | CPU s |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {run} | {n} | {images} | {wall:.1f} | {cpu:.1f} |" for run, n, images, wall, cpu in rows),
        "",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
