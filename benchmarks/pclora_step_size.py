"""PCLoRA's step size on a bank of a few hundred world LoRAs, chosen on validation styles.

PCLoRA's coefficients start at ``1 / K`` for a bank of ``K`` LoRAs, and Adam moves each by about its
learning rate per step, so a step size that suits a bank of 30 LoRAs throws a bank of 300 far off its
start. This runs the synthesis study (``autolora.synthesis.study``) at ``k = 4`` on validation styles
(outside the bank and outside the reproduction's held-out styles ``random-300`` .. ``329``) once per
learning rate, and prints style similarity and FD ratio (LoRA + CFG) of PCLoRA after each snapshot
beside the trained LoRA's. Resumable: each learning rate's study lives in ``--work``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/pclora_step_size.py --bank bank/ \
        --work pclora-step-size/ --out benchmarks/results/pclora_step_size_world.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolora.provenance import BenchmarkRun, publish
from autolora.stats import format_mean_ci95
from autolora.synthesis.bank import Bank
from autolora.synthesis.study import Study, StudyConfig
from autolora.world.styles import random_style_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, required=True, help="the study's bank (with conditions)")
    parser.add_argument("--work", type=Path, required=True, help="one study folder per learning rate")
    parser.add_argument("--styles", type=int, nargs=2, default=(340, 344), metavar=("FROM", "TO"))
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    parser.add_argument("--granularity", choices=("global", "layer", "factor"), default="layer")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args()
    run = BenchmarkRun()
    bank = Bank.open(args.bank)
    styles = random_style_names(range(*args.styles))
    rows = []
    for rate in args.learning_rates:
        config = StudyConfig(
            held_out=styles, ks=(4,), pclora_granularity=args.granularity, pclora_learning_rate=rate
        )
        study = Study(bank, args.work / f"{args.granularity}-lr{rate:g}", config)
        results = study.run()
        results = results[(results["guidance"] == "cfg") & (results["k"] == 4)]
        for method in ["trained", *(m for m in config.methods() if m.startswith("pclora@"))]:
            cell = results[results["method"] == method]
            rows.append(
                f"| {rate:g} | {method} | {format_mean_ci95(cell['style_similarity'])} "
                f"| {format_mean_ci95(cell['fd_ratio'])} | {cell['seconds'].median():.1f} |"
            )
    lines = [
        f"# PCLoRA's step size on a bank of {len(bank)} world LoRAs ({args.granularity} coefficients)",
        "",
        *run.header(),
        f"- validation styles: {', '.join(styles)} (k = 4 references each), the study's other defaults; "
        "mean [95 % interval] over styles, LoRA + CFG",
        "",
        "| learning rate | method | style similarity | FD ratio | median seconds |",
        "|---:|---|---|---|---:|",
        *rows,
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
