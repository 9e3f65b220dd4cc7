"""How alike world LoRAs are in weight space, and how much of a LoRA its style condition predicts.

A prior over LoRAs learns a map from a condition to LoRA weights; it can only learn what the bank's
weights share. Three measurements, on the miniature world's trainer (500 steps on 24 renders, rank 4):

1. Pairs of LoRAs (trained into ``--work``, resumable): one style trained twice from one
   initialisation on two render sets; one style and render set from two initialisations; different
   styles from one initialisation and from their own. Cosine over all modules of the update ``ΔW = B·A``,
   of the raw ``B`` factors, and of the canonical vectors (``autolora.synthesis.canonical``).
2. With ``--bank`` (a raw-factor bank of one initialisation): per module group, the mean cosine of
   ``B`` between the bank's LoRAs (different styles) beside that of the same-style pair of (1).
3. With ``--bank``: leave-one-out prediction of each bank LoRA's ``B`` factors from its condition by
   kernel ridge regression (RBF kernel plus a constant, exact closed-form leave-one-out), against the
   mean of the other LoRAs; mean cosine to the left-out LoRA with a 95 % bootstrap interval.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bank_structure.py --work bank-structure/ \
        --bank bank/ --out benchmarks/results/bank_structure_world.md
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from autolora.provenance import BenchmarkRun, publish
from autolora.stats import mean_ci95
from autolora.synthesis.bank import Bank
from autolora.synthesis.canonical import Factors, canonicalize, read_lora_modules
from autolora.world.assets import base_pipeline_path
from autolora.world.lora import train_lora
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import sample_style

#: The LoRAs of the pair table: file stem -> (style, initial-weights seed, render seed). Render seeds
#: follow ``train_lora_bank``'s rule (``100 + i`` for ``random-i``), so bank LoRAs are reproduced exactly.
LORAS = {
    "random-0": ("random-0", 0, 100),
    "random-0-renders1100": ("random-0", 0, 1100),
    "random-0-init1": ("random-0", 1, 100),
    **{f"random-{i}": (f"random-{i}", 0, 100 + i) for i in (1, 2, 3)},
    **{f"random-{i}-init{i}": (f"random-{i}", i, 100 + i) for i in (1, 2, 3)},
}
PAIRS = {
    "one style, one init, two render sets": [("random-0", "random-0-renders1100")],
    "one style, one render set, two inits": [("random-0", "random-0-init1")],
    "two styles, one init": [("random-0", "random-1"), ("random-1", "random-2"), ("random-2", "random-3")],
    "two styles, their own inits": [
        ("random-0", "random-1-init1"),
        ("random-1-init1", "random-2-init2"),
        ("random-2-init2", "random-3-init3"),
    ],
}


def train_pair_loras(work: Path, images: int = 24) -> dict[str, dict[str, Factors]]:
    """Every LoRA of ``LORAS`` in ``work`` (trained when missing), read as ``{module: (A, B)}``."""
    from diffusers import StableDiffusionPipeline

    work.mkdir(parents=True, exist_ok=True)
    pipeline = None
    for stem, (style, init_seed, render_seed) in LORAS.items():
        file = work / f"{stem}.safetensors"
        if file.exists():
            continue
        if pipeline is None:
            pipeline = StableDiffusionPipeline.from_pretrained(str(base_pipeline_path()), safety_checker=None)
        samples = sample_style(style, images, render_seed)
        config = replace(LoRATrainingConfig(), seed=init_seed)
        train_lora(pipeline, [s.image for s in samples], [s.caption for s in samples], file, config)
    return {stem: read_lora_modules(work / f"{stem}.safetensors") for stem in LORAS}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def flat(modules: dict[str, Factors], form: str) -> torch.Tensor:
    """All modules of a LoRA as one vector: its updates, its ``B`` factors, or its canonical factors."""
    if form == "update":
        return torch.cat([(b @ a).flatten() for a, b in modules.values()])
    if form == "B":
        return torch.cat([b.flatten() for _, b in modules.values()])
    return torch.cat([t.flatten() for a, b in modules.values() for t in canonicalize(a, b, a.shape[0])])


def pair_rows(loras: dict[str, dict[str, Factors]]) -> list[str]:
    rows = ["| pair | `ΔW` | raw `B` | canonical |", "|---|---:|---:|---:|"]
    for label, pairs in PAIRS.items():
        cells = []
        for form in ("update", "B", "canonical"):
            values = [cosine(flat(loras[x], form), flat(loras[y], form)) for x, y in pairs]
            cells.append(f"{min(values):.3f}-{max(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}")
        rows.append(f"| {label} ({len(pairs)} pair{'s' * (len(pairs) > 1)}) | " + " | ".join(cells) + " |")
    return rows


def module_group(module: str) -> str:
    """``attn1.to_q`` ... for a module name."""
    match = re.search(r"(attn\d)\.(to_q|to_k|to_v|to_out)", module)
    return f"{match.group(1)}.{match.group(2)}" if match else "other"


def b_columns(bank: Bank) -> tuple[np.ndarray, list[str]]:
    """The raw ``B`` segments of every bank row, and the module group of each entry."""
    ids = bank.layout.segment_ids().numpy()
    keep = [i for i, (name, _) in enumerate(bank.layout.segments) if name.endswith("lora_B.weight")]
    mask = np.isin(ids, keep)
    groups = np.array([module_group(name) for name, _ in bank.layout.segments])[ids][mask]
    return np.asarray(bank.weights, dtype=np.float64)[:, mask], list(groups)


def group_rows(bank: Bank, loras: dict[str, dict[str, Factors]]) -> list[str]:
    values, groups = b_columns(bank)
    rows = [
        "| module group | different styles (bank pairs) | one style, two render sets |",
        "|---|---:|---:|",
    ]
    for group in sorted(set(groups)):
        columns = np.array(groups) == group
        unit = values[:, columns] / np.linalg.norm(values[:, columns], axis=1, keepdims=True)
        gram, n = unit @ unit.T, len(unit)
        between = (gram.sum() - n) / (n * (n - 1))
        same = [
            torch.cat([m[name][1].flatten() for name in m if module_group(name) == group])
            for m in (loras["random-0"], loras["random-0-renders1100"])
        ]
        rows.append(f"| {group} | {between:.3f} | {cosine(*same):.3f} |")
    return rows


def loo_kernel_ridge(conditions: np.ndarray, targets: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Exact leave-one-out predictions of kernel ridge regression with an RBF kernel plus a constant.

    For ridge regression the left-out prediction is ``(ŷ_i - H_ii y_i) / (1 - H_ii)`` with the hat
    matrix ``H = K (K + λI)⁻¹``; the constant in the kernel stands in for an intercept.
    """
    distances = ((conditions[:, None] - conditions[None]) ** 2).sum(-1)
    kernel = np.exp(-gamma * distances) + 1.0
    hat = kernel @ np.linalg.inv(kernel + lam * np.eye(len(kernel)))
    fitted, leverage = hat @ targets, np.diag(hat)[:, None]
    return (fitted - leverage * targets) / (1 - leverage)


def ridge_rows(bank: Bank, grid: tuple[tuple[float, float], ...]) -> list[str]:
    values, _ = b_columns(bank)
    conditions = bank.conditions.double().numpy()
    n = len(values)

    def mean_cosine(predictions: np.ndarray) -> str:
        sims = (
            (predictions * values).sum(1)
            / np.linalg.norm(predictions, axis=1)
            / np.linalg.norm(values, axis=1)
        )
        mean, low, high = mean_ci95(sims)
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"

    others_mean = (values.sum(0, keepdims=True) - values) / (n - 1)
    rows = [
        "| predictor | cosine to the left-out LoRA's `B` |",
        "|---|---|",
        f"| mean of the other LoRAs | {mean_cosine(others_mean)} |",
    ]
    for gamma, lam in grid:
        rows.append(
            f"| kernel ridge, γ {gamma:g}, λ {lam:g} | {mean_cosine(loo_kernel_ridge(conditions, values, gamma, lam))} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, required=True, help="folder of the pair LoRAs (trained when missing)"
    )
    parser.add_argument("--bank", type=Path, help="a raw-factor bank of one initialisation, with conditions")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args()
    run = BenchmarkRun()
    loras = train_pair_loras(args.work)
    lines = [
        "# Weight-space structure of world LoRAs",
        "",
        *run.header(),
        "",
        "## Pairs of LoRAs: cosine over all modules",
        "",
        *pair_rows(loras),
    ]
    if args.bank:
        bank = Bank.open(args.bank)
        if bank.layout.factors != "raw" or bank.conditions is None:
            raise SystemExit(f"{args.bank}: needs a raw-factor bank built with --encoder")
        lines += ["", f"## `B` factors by module group ({len(bank)} bank LoRAs, {bank.encoder})", ""]
        lines += group_rows(bank, loras)
        lines += ["", "## Leave-one-out prediction of a bank LoRA from its condition", ""]
        lines += ridge_rows(bank, ((1.0, 1.0), (2.0, 1.0), (2.0, 0.1), (4.0, 1.0)))
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
