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
colours) next to the median distance from a style to its nearest other style. Last, what it cannot
see: each held-out style gets a twin that differs in one attribute only (a small colour shift, slant,
rotation, stroke weight, an effect switched, the stripes' angle), and the encoder retrieves among the
styles and their twins (chance of telling a pair apart: 50 %).

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/style_retrieval.py \
        --out benchmarks/results/style_retrieval_world.md
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autolora.provenance import BenchmarkRun, publish
from autolora.synthesis.conditions import ConditionEncoder, condition_of, load_encoder
from autolora.world.evaluators import load_evaluators
from autolora.world.style_encoder import (
    RetrievalSets,
    retrieval_accuracy,
    retrieval_hits,
    retrieval_sets,
)
from autolora.world.styles import STYLES, Style, get_style, random_style, random_style_names


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
        # The most similar other style: a miss may be a tie with the true one.
        similarity = torch.nn.functional.normalize(queries, dim=-1) @ gallery.T
        retrieved = similarity.masked_fill(torch.eye(len(truth), dtype=torch.bool), -torch.inf).argmax(1)
        for i in (hits < 1).nonzero().flatten().tolist():
            j = int(retrieved[i])
            rows.append(
                f"| {sets.styles[i]} | {sets.styles[j]} | {distances[i, j]:.3f} | {distances[i].min():.3f} "
                f"| {get_style(sets.styles[i]).description} | {get_style(sets.styles[j]).description} |"
            )
    return rows


def _shifted(colour: tuple[float, float, float], by: float) -> tuple[float, float, float]:
    # Away from the nearer bound, so that the shift is never clipped.
    return tuple(round(v - by if v > 0.5 else v + by, 3) for v in colour)


def _other_weight(style: Style) -> tuple[str, ...]:
    return ("bold",) if "bold" not in style.weight else ("thin",)


def _every(style: Style) -> bool:
    return True


#: One-attribute edits of a style, and which styles they apply to: a twin differs in that attribute alone.
TWINS: dict[str, tuple[Callable[[Style], bool], Callable[[Style], Style]]] = {
    "ink colour, 0.1 per channel": (_every, lambda s: dataclasses.replace(s, ink=(_shifted(s.ink[0], 0.1),))),
    "ink colour, 0.25 per channel": (
        _every,
        lambda s: dataclasses.replace(s, ink=(_shifted(s.ink[0], 0.25),)),
    ),
    "background, 0.1 per channel": (
        _every,
        lambda s: dataclasses.replace(s, background=(_shifted(s.background[0], 0.1),)),
    ),
    "slant, +0.3": (_every, lambda s: dataclasses.replace(s, slant=(s.slant[0] + 0.3, s.slant[1] + 0.3))),
    "rotation, +20 degrees": (
        _every,
        lambda s: dataclasses.replace(s, rotation=(s.rotation[0] + 20, s.rotation[1] + 20)),
    ),
    "stroke weight": (_every, lambda s: dataclasses.replace(s, weight=_other_weight(s))),
    "outline on/off (styles without glow)": (
        lambda s: not s.glow,
        lambda s: dataclasses.replace(s, outline=not s.outline),
    ),
    "shadow on/off": (_every, lambda s: dataclasses.replace(s, shadow=not s.shadow)),
    "glow on/off (styles without outline)": (
        lambda s: not s.outline,
        lambda s: dataclasses.replace(s, glow=not s.glow),
    ),
    "stripe angle, +45 degrees (striped styles)": (
        lambda s: s.texture == "stripes",
        lambda s: dataclasses.replace(s, stripe_angle=(s.stripe_angle[0] + 45, s.stripe_angle[1] + 45)),
    ),
}


def twin_rows(encoders: Sequence[ConditionEncoder], count: int, queries: int, seed: int) -> list[str]:
    """Top-1 retrieval among ``count`` held-out styles and their one-attribute twins, per attribute and encoder."""
    columns = [f"{encoder.spec}, k = {k}" for encoder in encoders for k in (1, 8)]
    rows = [f"| twins differ in | styles | {' | '.join(columns)} |", "|---|---|" + "---|" * len(columns)]
    for attribute, (applies, edit) in TWINS.items():
        candidates = (random_style(number) for number in range(10_000, 100_000))
        originals = list(itertools.islice(filter(applies, candidates), count))
        twins = [dataclasses.replace(edit(s), name=f"{s.name}-twin") for s in originals]
        sets = retrieval_sets([*originals, *twins], (1, 8), queries, seed)
        reports = [retrieval_accuracy(encoder, sets, tops=(1,)) for encoder in encoders]
        cells = [cell(report[f"k{k}"]["top1"]) for report in reports for k in (1, 8)]
        rows.append(f"| {attribute} | {2 * len(originals)} | {' | '.join(cells)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--encoder", default="world:style", help="the style encoder: world:style or world:<folder>"
    )
    parser.add_argument("--random-styles", type=int, default=330, help="held-out random styles random-0 ..")
    parser.add_argument("--large", type=int, default=3000, help="a larger gallery of held-out random styles")
    parser.add_argument(
        "--twins", type=int, default=40, help="held-out styles with a one-attribute twin each"
    )
    parser.add_argument("--queries", type=int, default=2, help="query sets per style and k")
    parser.add_argument("--seed", type=int, default=1, help="render seed (the stage's own report used 0)")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args()
    run = BenchmarkRun()

    encoders: list[ConditionEncoder] = [load_encoder(args.encoder), ClassifierLogits(), DiversityFeatures()]
    groups = {
        f"{args.random_styles} held-out random styles": random_style_names(range(args.random_styles)),
        "9 named styles (8 unseen by the encoder)": list(STYLES),
        f"{args.large} held-out random styles, 1 query set": random_style_names(range(args.large)),
    }
    lines = [
        "# Style retrieval on held-out styles of the miniature world",
        "",
        *run.header(),
        f"- gallery: 8 renders of training digits per style; queries: {args.queries} sets (the largest group:"
        " 1) of k renders of held-out digits per style and k; mean [95 % bootstrap interval over styles]",
        "",
    ]
    sets = {}
    for group, names in groups.items():
        queries = 1 if group.endswith("1 query set") else args.queries
        sets[group] = retrieval_sets(names, (1, 4, 8), queries, args.seed)
        lines += [f"## {group}", "", "| encoder | k | top-1 | top-5 |", "|---|---|---|---|"]
        for encoder in encoders:
            report = retrieval_accuracy(encoder, sets[group])
            for k in (1, 4, 8):
                row = report[f"k{k}"]
                lines.append(f"| {encoder.spec} | {k} | {cell(row['top1'])} | {cell(row['top5'])} |")
        lines.append("")
    large = list(sets)[-1]
    lines += [f"## What the style encoder confuses ({large}, k = 1, top-1 misses)", ""]
    lines += confusions(encoders[0], sets[large])
    lines += ["", "## What it cannot see: styles and their one-attribute twins (seeds 10,000 ..)", ""]
    lines += twin_rows(encoders, args.twins, args.queries, args.seed)
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
