"""The miniature world's style encoder: which style an image is in, whatever digit it shows.

The analogue of ArcFace for the world's continuous style space (``random_style(seed)``): a small CNN
maps a 32x32 render to a unit vector, trained with a supervised contrastive loss whose positives are
other renders (other digits, other jitter) of the same style. It trains on the base style, random
styles of ``RANDOM_TRAINING_SEEDS`` and palette twins made from them only, so the styles of the LoRA
bank (seeds ``0 ..``) and the named LoRA styles are unseen, and its retrieval accuracy on them (``style_retrieval``) says how
well a condition from a few images names a new style.

It is the condition encoder ``world:style`` (``autolora.synthesis.conditions.load_encoder``), or
``world:<folder>`` for weights trained into another folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autolora.errors import InputFileError
from autolora.stats import mean_ci95
from autolora.synthesis.conditions import ConditionEncoder, condition_of
from autolora.training import Schedule, StageResult, run_stage
from autolora.world.evaluators import EVALUATORS_DIR, ConvNet, WorldEvaluators
from autolora.world.styles import (
    RANDOM_TRAINING_SEEDS,
    STYLES,
    Style,
    random_style,
    random_style_names,
    sample_style,
)
from autolora.world.training import training_device, write_json

if TYPE_CHECKING:
    from autolora.world.train import Plan

EMBEDDING_DIM = 64
WEIGHTS_FILE, CONFIG_FILE = "style_encoder.safetensors", "style_encoder.json"
#: The one named style trained on: the base model's. The named LoRA styles stay unseen, like the bank's.
TRAINING_NAMED_STYLES = ("base",)
#: Renders per style that make a style's gallery condition in ``style_retrieval``.
GALLERY_RENDERS = 8
RETRIEVAL_KS = (1, 4, 8)
TEMPERATURE = 0.1
#: Render seeds of each query set start this far apart, so no two sets (and no gallery) share a seed.
QUERY_SEED_STRIDE = 100_000


def supervised_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon's ``L_out`` (Khosla et al. 2020, Eq. 2) on unit embeddings ``z`` with style ``labels``:

    ``L = mean_i -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )``

    where ``P(i)`` are the other samples of ``i``'s style; InfoNCE with several positives.
    """
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = logits.masked_fill(self_mask, -torch.inf).log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    return -(log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1)).mean()


class StyleEncoder:
    """A trained style encoder as a condition encoder: ``embed`` gives unit ``(N, EMBEDDING_DIM)`` vectors."""

    def __init__(self, network: ConvNet, spec: str = "world:style") -> None:
        self.network, self.spec = network.eval(), spec

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = WorldEvaluators.pixels(images)
        return torch.nn.functional.normalize(self.network(pixels), dim=-1)


def load_style_encoder(folder: Path = EVALUATORS_DIR, spec: str = "world:style") -> StyleEncoder:
    """The style encoder trained into ``folder`` (the shipped one by default); a clear error if it is not there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"style encoder folder {folder} does not exist")
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.exists() or not config_path.exists():
        raise InputFileError(
            f"{folder} holds no style encoder: it needs {WEIGHTS_FILE} and {CONFIG_FILE} "
            "(`python -m autolora.world.train style-encoder --out DIR` writes them to DIR/evaluators)"
        )
    try:
        config = json.loads(config_path.read_text())
        network = ConvNet(config["embedding_dim"], config["width"], "average")
        network.load_state_dict(load_file(weights))
    except (json.JSONDecodeError, KeyError, RuntimeError, SafetensorError) as error:
        raise InputFileError(f"style encoder in {folder} is unreadable or malformed: {error}") from None
    return StyleEncoder(network, spec)


def encoder_from_spec(spec: str, model: str) -> StyleEncoder:
    """The ``world:<model>`` condition encoder: ``world:style`` is the shipped one, else a folder."""
    return load_style_encoder(EVALUATORS_DIR if model == "style" else Path(model).expanduser(), spec)


# --- Training ---------------------------------------------------------------------------------------


def palette_twin(style: Style, other: Style) -> Style:
    """``other``'s texture, effects, geometry and stroke weights in ``style``'s colours: a hard negative
    for ``style`` that only what is not colour tells apart."""
    texture_colour = (style.texture_colour or other.texture_colour) if other.texture != "solid" else ()
    return dataclasses.replace(
        other,
        name=f"{style.name}-twin",
        ink=style.ink,
        background=style.background,
        texture_colour=texture_colour,
    )


def training_styles(plan: Plan) -> list[Style]:
    """The styles the encoder trains on: the base style, the first ``n = plan.style_encoder_styles``
    random training styles, then a palette twin of each, whose other attributes come from the next
    ``n`` training seeds.

    Random styles differ mostly in colour, so without twins colour alone would tell every pair apart.
    """
    n = plan.style_encoder_styles
    originals = [random_style(seed) for seed in RANDOM_TRAINING_SEEDS[:n]]
    partners = [random_style(seed) for seed in RANDOM_TRAINING_SEEDS[n : 2 * n]]
    twins = [palette_twin(style, other) for style, other in zip(originals, partners, strict=True)]
    return [*(STYLES[name] for name in TRAINING_NAMED_STYLES), *originals, *twins]


def render_pool(styles: Sequence[str | Style], renders: int, seed: int) -> torch.Tensor:
    """``(styles, renders, 3, 32, 32)`` uint8 renders of training digits, each style its own seed.

    Rendering costs milliseconds an image, so the pool is drawn once and a step only indexes it.
    """
    return torch.stack(
        [
            torch.from_numpy(np.stack([np.asarray(s.image) for s in sample_style(name, renders, seed + i)]))
            for i, name in enumerate(styles)
        ]
    ).permute(0, 1, 4, 2, 3)


def train_style_encoder(out: Path, work: Path, plan: Plan, seed: int) -> tuple[StageResult, dict]:
    """Stage: the style encoder, contrastively on a pool of training renders; writes it to ``out/evaluators``.

    Each step draws ``plan.style_encoder_batch_styles / 2`` random styles with their palette twins, and
    the base style, with ``plan.style_encoder_batch_renders`` distinct renders of each. Returns the stage
    result and the retrieval accuracy on held-out styles.
    """
    device = training_device()
    pool = render_pool(training_styles(plan), plan.style_encoder_renders, seed + 3000).to(device)
    renders = pool.shape[1]
    named, pairs = len(TRAINING_NAMED_STYLES), plan.style_encoder_styles
    per_batch = max(1, min(plan.style_encoder_batch_styles // 2, pairs))
    torch.manual_seed(seed)
    network = ConvNet(EMBEDDING_DIM, plan.style_encoder_width, "average").to(device)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        # Twins in one batch are each other's hardest negatives; the named styles join every batch.
        originals = named + torch.randperm(pairs, generator=generator)[:per_batch]
        chosen = torch.cat([torch.arange(named), originals, originals + pairs])
        which = torch.rand(len(chosen), renders, generator=generator).argsort(1)[
            :, : plan.style_encoder_batch_renders
        ]
        batch = pool[chosen[:, None].to(device), which.to(device)].flatten(0, 1).float() / 127.5 - 1.0
        labels = chosen.repeat_interleave(which.shape[1]).to(device)
        z = torch.nn.functional.normalize(network(batch), dim=-1)
        return supervised_contrastive_loss(z, labels, TEMPERATURE)

    schedule = Schedule(plan.style_encoder_steps, learning_rate=2e-3, warmup=100, checkpoint_every=100)
    result = run_stage(
        "style-encoder",
        {"encoder": network},
        network.parameters(),
        loss_fn,
        schedule,
        seed=seed,
        checkpoint=work / "style-encoder.ckpt",
    )
    encoder = StyleEncoder(network.to("cpu"))
    retrieval = {
        "random": style_retrieval(encoder, random_style_names(range(plan.style_retrieval_styles)), seed=seed),
        "named": style_retrieval(encoder, list(STYLES), seed=seed),
    }
    out_dir = out / "evaluators"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, out_dir / WEIGHTS_FILE)
    config = {
        "embedding_dim": EMBEDDING_DIM,
        "width": plan.style_encoder_width,
        "trained_on": {
            "named": list(TRAINING_NAMED_STYLES),
            "random_seeds": [
                RANDOM_TRAINING_SEEDS.start,
                RANDOM_TRAINING_SEEDS.start + plan.style_encoder_styles,
            ],
            "palette_twin_partner_seeds": [
                RANDOM_TRAINING_SEEDS.start + plan.style_encoder_styles,
                RANDOM_TRAINING_SEEDS.start + 2 * plan.style_encoder_styles,
            ],
        },
        "retrieval": retrieval,
    }
    write_json(out_dir / CONFIG_FILE, config)
    return result, retrieval


# --- Retrieval --------------------------------------------------------------------------------------


def retrieval_hits(
    gallery: torch.Tensor, queries: torch.Tensor, truth: torch.Tensor, top: int
) -> torch.Tensor:
    """Per query, whether its true gallery entry is among the ``top`` most cosine-similar ones.

    Ties are broken at random in expectation: a query whose entry ties with ``t`` others at rank ``r``
    counts ``(top - r) / (t + 1)`` clipped to [0, 1], so a constant encoder scores exactly ``top / N``.
    """
    similarity = (
        torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(gallery, dim=-1).T
    )
    own = similarity.gather(1, truth[:, None])
    above = (similarity > own).sum(1)
    tied = (similarity == own).sum(1)
    return ((top - above) / tied).clamp(0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class RetrievalSets:
    """Image sets of ``styles``: one gallery set each, and ``queries[k][q][i]`` the ``q``-th query set of style ``i``."""

    styles: list[str]
    gallery: list[list[Image.Image]]
    queries: dict[int, list[list[list[Image.Image]]]]


def retrieval_sets(
    styles: Sequence[str | Style], ks: Sequence[int], queries: int, seed: int
) -> RetrievalSets:
    """Renders for ``style_retrieval``: a gallery of ``GALLERY_RENDERS`` renders of training digits per
    style, and per ``k`` ``queries`` sets of ``k`` renders of held-out digits (other digits, other jitter)."""
    gallery = [
        [s.image for s in sample_style(name, GALLERY_RENDERS, seed + i)] for i, name in enumerate(styles)
    ]
    sets: dict[int, list[list[list[Image.Image]]]] = {k: [] for k in ks}
    for j, (k, _) in enumerate((k, q) for k in ks for q in range(queries)):
        # Each (k, query) pair has its own block of seeds, one per style, apart from the gallery's.
        first = seed + QUERY_SEED_STRIDE * (j + 1)
        sets[k].append(
            [
                [s.image for s in sample_style(name, k, first + i, split="held_out")]
                for i, name in enumerate(styles)
            ]
        )
    return RetrievalSets([s if isinstance(s, str) else s.name for s in styles], gallery, sets)


def retrieval_accuracy(encoder: ConditionEncoder, sets: RetrievalSets, tops: Sequence[int] = (1, 5)) -> dict:
    """Top-``n`` retrieval of each style's gallery condition from its query conditions, per ``k``.

    Returns ``{"styles": N, "k1": {"top1": [mean, low, high], ...}, ...}``: per style the mean hit over
    its query sets, then the mean over styles with its 95% bootstrap interval (``autolora.stats``).
    """
    gallery = torch.stack([condition_of(encoder, images) for images in sets.gallery])
    truth = torch.arange(len(sets.styles))
    report: dict = {"styles": len(sets.styles)}
    for k, query_sets in sets.queries.items():
        conditions = [
            torch.stack([condition_of(encoder, images) for images in per_style]) for per_style in query_sets
        ]
        report[f"k{k}"] = {
            f"top{top}": [
                round(v, 4)
                for v in mean_ci95(
                    torch.stack([retrieval_hits(gallery, c, truth, top) for c in conditions]).mean(0).numpy()
                )
            ]
            for top in tops
        }
    return report


def style_retrieval(
    encoder: ConditionEncoder,
    styles: Sequence[str | Style],
    *,
    ks: Sequence[int] = RETRIEVAL_KS,
    queries: int = 2,
    seed: int = 0,
) -> dict:
    """Retrieval accuracy of ``encoder`` among ``styles`` (``retrieval_sets`` then ``retrieval_accuracy``)."""
    return retrieval_accuracy(encoder, retrieval_sets(styles, ks, queries, seed))
