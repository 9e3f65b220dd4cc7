"""Which encoder of the miniature world tells unseen styles apart: retrieval accuracy on held-out styles.

Compared, as condition encoders (``condition_of``: the mean of unit embeddings of a set of images):

- ``world:style``, the contrastive style encoder (``autolora.world.style_encoder``);
- the world's style classifier (its 9 logits): trained on the named styles, blind to the rest;
- the world's diversity features (the autoencoder code of the ``world`` extractor).

For each group of styles (the held-out random styles ``random-0 ..``, and the 9 named styles, of which
the encoder trained only on ``base``) every style's gallery condition comes from 8 renders of training
digits and its queries from k = 1, 4, 8 renders of held-out digits; top-1 and top-5 accuracy with 95 %
bootstrap intervals over styles (``autolora.stats``). Then the encoder's top-1 misses at k = 1: which
styles it confuses, and how close their palettes are (RGB distance of ink, background and texture
colours) next to the median distance from a style to its nearest other style.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/style_retrieval.py \
        --out benchmarks/results/style_retrieval_world.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autolora.provenance import git_revision, package_versions
from autolora.synthesis.conditions import ConditionEncoder, condition_of, load_encoder
from autolora.world.evaluators import load_evaluators
from autolora.world.style_encoder import RetrievalSets, retrieval_accuracy, retrieval_hits, retrieval_sets
from autolora.world.styles import STYLES, get_style, random_style_names


class ClassifierLogits:
    """The world's style classifier as a condition encoder: its logits over the named styles."""

    spec = "world classifier logits"

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        evaluators = load_evaluators()
        with torch.no_grad():
            return evaluators.style(evaluators.pixels(images))


class DiversityFeatures:
    """The ``world`` feature extractor's centred autoencoder codes as a condition encoder."""

    spec = "world diversity features"

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return load_evaluators().features(images)


def palette(name: str) -> np.ndarray:
    """Ink, background and texture colour (the background again when solid) of a random style."""
    style = get_style(name)
    texture = style.texture_colour or style.background
    return np.concatenate([style.ink[0], style.background[0], texture[0]])


def cell(interval: list[float]) -> str:
    mean, low, high = interval
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def confusions(encoder: ConditionEncoder, sets: RetrievalSets) -> list[str]:
    """Table rows of the encoder's top-1 misses at k = 1 among random styles, with palette distances."""
    gallery = torch.stack([condition_of(encoder, images) for images in sets.gallery])
    palettes = np.stack([palette(name) for name in sets.styles])
    distances = np.linalg.norm(palettes[:, None] - palettes[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = float(np.median(distances.min(1)))
    rows = [
        f"Median RGB palette distance from a style to its nearest other style: {nearest:.3f}.",
        "",
        "| query style | retrieved | palette distance | query's nearest palette | query | retrieved |",
        "|---|---|---|---|---|---|",
    ]
    truth = torch.arange(len(sets.styles))
    for query_sets in sets.queries[1]:
        queries = torch.stack([condition_of(encoder, images) for images in query_sets])
        hits = retrieval_hits(gallery, queries, truth, 1)
        retrieved = (torch.nn.functional.normalize(queries, dim=-1) @ gallery.T).argmax(1)
        for i in (hits < 1).nonzero().flatten().tolist():
            j = int(retrieved[i])
            rows.append(
                f"| {sets.styles[i]} | {sets.styles[j]} | {distances[i, j]:.3f} | {distances[i].min():.3f} "
                f"| {get_style(sets.styles[i]).description} | {get_style(sets.styles[j]).description} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-styles", type=int, default=330, help="held-out random styles random-0 ..")
    parser.add_argument("--queries", type=int, default=2, help="query sets per style and k")
    parser.add_argument("--seed", type=int, default=1, help="render seed (the stage's own report used 0)")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args()

    encoders: list[ConditionEncoder] = [load_encoder("world:style"), ClassifierLogits(), DiversityFeatures()]
    groups = {
        f"{args.random_styles} held-out random styles": random_style_names(range(args.random_styles)),
        "9 named styles (8 unseen by the encoder)": list(STYLES),
    }
    lines = [
        "# Style retrieval on held-out styles of the miniature world",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}",
        f"- command: `{shlex.join(['python', *sys.argv])}`; revision {git_revision()}",
        f"- versions: {package_versions()}",
        f"- gallery: 8 renders of training digits per style; queries: {args.queries} sets of k renders of "
        "held-out digits per style and k; mean [95 % bootstrap interval over styles]",
        "",
    ]
    sets = {}
    for group, names in groups.items():
        sets[group] = retrieval_sets(names, (1, 4, 8), args.queries, args.seed)
        lines += [f"## {group}", "", "| encoder | k | top-1 | top-5 |", "|---|---|---|---|"]
        for encoder in encoders:
            report = retrieval_accuracy(encoder, sets[group])
            for k in (1, 4, 8):
                row = report[f"k{k}"]
                lines.append(f"| {encoder.spec} | {k} | {cell(row['top1'])} | {cell(row['top5'])} |")
        lines.append("")
    lines += ["## What the style encoder confuses (random styles, k = 1, top-1 misses)", ""]
    lines += confusions(encoders[0], next(iter(sets.values())))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
