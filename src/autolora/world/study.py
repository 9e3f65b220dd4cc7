"""Does the miniature world show the paper's problem? ``python -m autolora.world.study``.

For every style LoRA and several digits, generates the same seeds with the base model (prompt
"a seven"), the LoRA with CFG ("a seven in neon style", LoRA scale 1.0) and AutoLoRA, and
measures per prompt: diversity (Eq. 8 on the ``world`` features), style score and digit score.
Means over prompts come with 95% bootstrap confidence intervals (``autolora.stats.mean_ci95``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from autolora.metrics.diversity import diversity
from autolora.stats import format_mean_ci95
from autolora.world.assets import ASSETS_DIR, WORLD_CFG
from autolora.world.evaluators import load_evaluators
from autolora.world.styles import DIGIT_NAMES, get_style

METHODS = ("base", "lora", "autolora")


def style_loras(world: Path = ASSETS_DIR) -> list[str]:
    """The style LoRAs (not the character, format twins or training-length checkpoints) of ``world``."""
    index = json.loads((world / "loras" / "index.json").read_text())
    return sorted(
        name
        for name, entry in index.items()
        if entry["kind"] == "style" and "format" not in entry and "checkpoint_of" not in entry
    )


def world_pipeline(world: Path, lora: str | None = None) -> Any:
    """The base pipeline of the trained world folder ``world``, with its LoRA ``lora`` loaded if given."""
    from autolora.lora import load_lora
    from autolora.pipelines import load_pipeline

    pipe = load_pipeline(str(world / "pipeline"))
    if lora is not None:
        index = json.loads((world / "loras" / "index.json").read_text())
        load_lora(pipe, str(world / "loras" / index[lora].get("file", f"{lora}.safetensors")))
    return pipe


def sample(pipe: Any, prompt: str, count: int, steps: int, seed: int, **options: Any) -> list[Image.Image]:
    """``count`` images of ``prompt`` at the world's CFG scale in both branches; ``options`` go to ``generate``."""
    from autolora.pipelines import generate

    return generate(
        pipe,
        prompt,
        cfg_base=WORLD_CFG,
        cfg_lora=WORLD_CFG,
        num_inference_steps=steps,
        seed=seed,
        num_images=count,
        progress=False,
        **options,
    )


def run_study(
    loras: list[str],
    digits: list[int],
    images: int,
    steps: int,
    gamma: float,
    seed: int = 0,
    world: Path = ASSETS_DIR,
) -> pd.DataFrame:
    """One row per (LoRA, digit, method): diversity, style score and digit score of ``images`` samples.

    ``world`` is a trained world folder (pipeline, loras, evaluators); the shipped one by default.
    """
    evaluators = load_evaluators(world / "evaluators")
    index = json.loads((world / "loras" / "index.json").read_text())
    rows = []
    for name in loras:
        style = get_style(index[name]["style"])
        pipe = world_pipeline(world, name)
        for digit in digits:
            word = DIGIT_NAMES[digit]
            for method in METHODS:
                prompt = f"a {word}" if method == "base" else f"a {word} in {style.trigger} style"
                batch = sample(pipe, prompt, images, steps, seed, method=method, gamma=gamma)
                style_p = evaluators.style_probabilities(batch)[:, evaluators.styles.index(style.name)]
                rows.append(
                    {
                        "lora": name,
                        "digit": digit,
                        "method": method,
                        "prompt": prompt,
                        "diversity": diversity(evaluators.features(batch)),
                        "style_score": float(style_p.mean()),
                        "digit_score": float(evaluators.digit_probabilities(batch)[:, digit].mean()),
                    }
                )
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI over prompts of each metric per method, plus the paired LoRA-minus-base gap."""
    rows = []
    # Base prompts do not depend on the LoRA: count each of them once.
    distinct = results.drop_duplicates(subset=["method", "prompt"])
    for method, group in distinct.groupby("method", sort=False):
        row = {"method": method, "prompts": len(group)}
        for metric in ("diversity", "style_score", "digit_score"):
            row[metric] = format_mean_ci95(group[metric].to_numpy())
        rows.append(row)
    paired = results.pivot_table(index=["lora", "digit"], columns="method", values="diversity")
    gap = (paired["lora"] - paired["base"]).to_numpy()
    rows.append({"method": "lora - base (paired)", "prompts": len(gap), "diversity": format_mean_ci95(gap)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line of the study; writes the per-prompt CSV and prints the summary."""
    parser = argparse.ArgumentParser(
        prog="python -m autolora.world.study", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--world", type=Path, default=ASSETS_DIR, help="trained world (default: the shipped one)"
    )
    parser.add_argument("--loras", nargs="+", help="LoRA names (default: every style LoRA of the world)")
    parser.add_argument("--digits", nargs="+", type=int, default=[0, 2, 3, 5, 7])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gamma", type=float, default=1.5)
    parser.add_argument("--csv", type=Path, default=Path("world-study.csv"))
    args = parser.parse_args(argv)
    loras = args.loras or style_loras(args.world)
    results = run_study(loras, args.digits, args.images, args.steps, args.gamma, world=args.world)
    results.to_csv(args.csv, index=False)
    print(summarise(results).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
