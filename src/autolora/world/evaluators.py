"""The miniature world's evaluators: digit and style classifiers and a diversity feature extractor.

The paper measures prompt correspondence with CLIP, style adherence with a judge and
diversity with DINOv2 features. Here three small networks, trained on clean renders of training
digits (no augmentation that would forgive blur) with held-out digits for accuracy, play those
parts:

* ``world:digit`` (image metric): ``digit_pred`` and ``digit_score``, the probability of the
  prompted digit (from ``meta["digit"]`` or a digit word in ``meta["prompt"]``);
* ``world:style`` (image metric): ``style_pred`` and ``style_score``, the probability of the
  target style (``meta["style"]`` or the ``style`` option);
* ``world`` (feature extractor): the centred code of a separately trained autoencoder, so
  that cosine similarity between features compares layout and colour, not class labels.

Importing this module registers all three.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from autolora.errors import ConfigError, InputFileError
from autolora.metrics.features import FeatureExtractor, register_extractor
from autolora.metrics.registry import ImageRecord, Metric, register_metric
from autolora.training import Schedule, StageResult, run_stage
from autolora.world.assets import ASSETS_DIR
from autolora.world.styles import (
    DIGIT_NAMES,
    IMAGE_SIZE,
    RANDOM_TRAINING_SEEDS,
    STYLES,
    random_style_names,
    sample_styles,
)
from autolora.world.training import images_to_tensor, training_device, write_json

if TYPE_CHECKING:
    from autolora.world.train import Plan

EVALUATORS_DIR = ASSETS_DIR / "evaluators"
FEATURE_DIM = 32


class ConvNet(nn.Module):
    """Three strided convolutions, then a linear head on the 4x4 feature map (or its average)."""

    def __init__(self, out_dim: int, width: int, pool: Literal["flatten", "average"] = "flatten") -> None:
        super().__init__()
        # Flattening keeps where strokes are (a six is a rotated nine); averaging, used by the first
        # shipped evaluators, keeps only what is there.
        pooled = [nn.Flatten()] if pool == "flatten" else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            *pooled,
        )
        cells = (IMAGE_SIZE // 8) ** 2 if pool == "flatten" else 1
        self.head = nn.Linear(4 * width * cells, out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixels))


class Decoder(nn.Module):
    """Maps a feature code back to a 32x32 image; only used to train the feature extractor."""

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.project = nn.Linear(in_dim, 4 * width * 4 * 4)
        self.body = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),
        )

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(code).view(-1, 4 * self.width, 4, 4))


def _dataset(
    counts: Mapping[str, int], seed: int, split: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels, digits and style labels (index into ``STYLES``; -1 for random styles) of renders."""
    style_names = list(STYLES)
    samples = sample_styles(dict(counts), seed, split=split)
    pixels = images_to_tensor([s.image for s in samples])
    digits = torch.tensor([s.digit for s in samples])
    styles = torch.tensor([style_names.index(s.style) if s.style in STYLES else -1 for s in samples])
    return pixels, digits, styles


def training_counts(plan: Plan) -> dict[str, int]:
    """Renders per style for the evaluators: every named style and the random training styles."""
    per_style = plan.evaluator_renders_per_style
    counts = {name: 6 * per_style if name == "base" else per_style for name in STYLES}
    seeds = RANDOM_TRAINING_SEEDS[: plan.random_styles]
    return counts | dict.fromkeys(random_style_names(seeds), plan.evaluator_renders_per_random_style)


def held_out_accuracy(evaluators: WorldEvaluators, plan: Plan, seed: int) -> dict[str, float]:
    """Accuracy on renders of held-out digits: named styles (digit, style) and unseen random styles (digit).

    The random styles are seeds ``0 .. plan.held_out_random_styles - 1``, outside ``RANDOM_TRAINING_SEEDS``.
    """
    pixels, digits, styles = _dataset(dict.fromkeys(STYLES, plan.held_out_renders), seed, "held_out")
    seeds = range(plan.held_out_random_styles)
    counts = dict.fromkeys(random_style_names(seeds), plan.held_out_renders_per_random_style)
    random_pixels, random_digits, _ = _dataset(counts, seed + 100, "held_out")
    with torch.no_grad():
        return {
            "digit": float((evaluators.digit(pixels).argmax(1) == digits).float().mean()),
            "style": float((evaluators.style(pixels).argmax(1) == styles).float().mean()),
            "digit_random_styles": float(
                (evaluators.digit(random_pixels).argmax(1) == random_digits).float().mean()
            ),
        }


def train_evaluators(out: Path, work: Path, plan: Plan, seed: int) -> tuple[StageResult, dict[str, float]]:
    """Stage 2: train the three networks on clean renders of training digits; held-out accuracy on the others."""
    device = training_device()
    pixels, digits, styles = (t.to(device) for t in _dataset(training_counts(plan), seed + 1000, "train"))
    named = (styles >= 0).nonzero().squeeze(1)
    width = plan.evaluator_width
    torch.manual_seed(seed)
    digit_net, style_net = ConvNet(len(DIGIT_NAMES), width), ConvNet(len(STYLES), width)
    encoder, decoder = ConvNet(FEATURE_DIM, width), Decoder(FEATURE_DIM, width)
    modules = {"digit": digit_net, "style": style_net, "encoder": encoder, "decoder": decoder}
    for module in modules.values():
        module.to(device)
    batch_size = plan.evaluator_batch

    # Three independent objectives summed: each network only receives its own gradient. The style
    # classifier sees named styles only: a random style is not one of its classes.
    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pixels), (batch_size,), generator=generator).to(device)
        named_index = named[torch.randint(len(named), (batch_size,), generator=generator).to(device)]
        batch = pixels[index]
        cross_entropy = nn.functional.cross_entropy
        return (
            cross_entropy(digit_net(batch), digits[index])
            + cross_entropy(style_net(pixels[named_index]), styles[named_index])
            + nn.functional.mse_loss(decoder(encoder(batch)), batch)
        )

    parameters = [p for module in modules.values() for p in module.parameters()]
    schedule = Schedule(plan.evaluator_steps, learning_rate=2e-3, warmup=100)
    result = run_stage(
        "evaluators", modules, parameters, loss_fn, schedule, seed=seed, checkpoint=work / "evaluators.ckpt"
    )
    for module in modules.values():
        module.to("cpu")
    with torch.no_grad():
        mean_code = torch.cat([encoder(chunk) for chunk in pixels.cpu().split(512)]).mean(0)
    evaluators = WorldEvaluators(digit_net, style_net, encoder, mean_code, list(STYLES))
    accuracy = held_out_accuracy(evaluators, plan, seed + 2000)
    state = {f"digit.{k}": v for k, v in digit_net.state_dict().items()}
    state |= {f"style.{k}": v for k, v in style_net.state_dict().items()}
    state |= {f"features.{k}": v for k, v in encoder.state_dict().items()}
    state["features.mean"] = mean_code
    out_dir = out / "evaluators"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out_dir / "evaluators.safetensors")
    config = {
        "width": width,
        "pool": "flatten",
        "feature_dim": FEATURE_DIM,
        "styles": list(STYLES),
        "held_out_accuracy": accuracy,
        "held_out_images": plan.held_out_renders * len(STYLES),
        "held_out_random_style_images": plan.held_out_renders_per_random_style * plan.held_out_random_styles,
    }
    write_json(out_dir / "evaluators.json", config)
    return result, accuracy


@dataclass
class WorldEvaluators:
    """The three trained networks, ready for inference."""

    digit: ConvNet
    style: ConvNet
    encoder: ConvNet
    feature_mean: torch.Tensor
    styles: list[str]

    @staticmethod
    def pixels(images: Sequence[Image.Image]) -> torch.Tensor:
        """Images resized to the world's resolution, as the networks' input."""
        return images_to_tensor([image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)) for image in images])

    @torch.no_grad()
    def digit_probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, 10)`` probabilities of each digit."""
        return self.digit(self.pixels(images)).softmax(-1)

    @torch.no_grad()
    def style_probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, len(styles))`` probabilities of each style."""
        return self.style(self.pixels(images)).softmax(-1)

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, FEATURE_DIM)`` centred autoencoder codes."""
        return (self.encoder(self.pixels(images)) - self.feature_mean).float()


@functools.cache
def load_evaluators(folder: Path = EVALUATORS_DIR) -> WorldEvaluators:
    """The shipped evaluators (or those in ``folder``), loaded once per process."""
    weights, config_path = folder / "evaluators.safetensors", folder / "evaluators.json"
    if not weights.exists() or not config_path.exists():
        raise InputFileError(
            f"no trained evaluators in {folder}; run `python -m autolora.world.train evaluators`"
        )
    config = json.loads(config_path.read_text())
    state = load_file(weights)
    networks = {}
    for prefix, out_dim in (
        ("digit", 10),
        ("style", len(config["styles"])),
        ("features", config["feature_dim"]),
    ):
        network = ConvNet(out_dim, config["width"], config.get("pool", "average"))
        network.load_state_dict(
            {
                k.removeprefix(f"{prefix}."): v
                for k, v in state.items()
                if k.startswith(f"{prefix}.") and k != "features.mean"
            }
        )
        networks[prefix] = network.eval()
    return WorldEvaluators(
        networks["digit"], networks["style"], networks["features"], state["features.mean"], config["styles"]
    )


def _load(folder: str | None) -> WorldEvaluators:
    """The evaluators in ``folder`` (a trained world's ``evaluators`` folder), or the shipped ones."""
    return load_evaluators(Path(folder)) if folder is not None else load_evaluators()


@register_extractor("world")
class WorldFeatureExtractor(FeatureExtractor):
    """Centred codes of the miniature world's autoencoder (the DINOv2 analogue for diversity).

    Option ``evaluators``: a folder of trained evaluators instead of the shipped ones; any other
    option name is refused when the extractor is created.
    """

    def __init__(self, evaluators: str | None = None) -> None:
        super().__init__(**({"evaluators": evaluators} if evaluators is not None else {}))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return _load(self.options.get("evaluators")).features(images)


_DIGIT_WORDS = re.compile(r"\b(" + "|".join(DIGIT_NAMES) + r")\b", re.IGNORECASE)


def prompted_digit(meta: Mapping[str, Any]) -> int | None:
    """The digit an image should show: ``meta["digit"]``, else the first digit word of the prompt."""
    if meta.get("digit") is not None:
        return int(meta["digit"])
    match = _DIGIT_WORDS.search(str(meta.get("prompt", "")))
    return DIGIT_NAMES.index(match.group(1).lower()) if match else None


@register_metric("world:digit")
class WorldDigitMetric(Metric):
    """Prompt correspondence: the probability that the image shows the prompted digit.

    Option ``evaluators``: a folder of trained evaluators instead of the shipped ones.
    """

    level = "image"

    def __init__(self, evaluators: str | None = None) -> None:
        super().__init__(**({"evaluators": evaluators} if evaluators is not None else {}))

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        probabilities = _load(self.options.get("evaluators")).digit_probabilities([r.image for r in records])
        rows = []
        for record, p in zip(records, probabilities, strict=True):
            digit = prompted_digit(record.meta)
            score = float(p[digit]) if digit is not None else float("nan")
            rows.append({"digit_pred": int(p.argmax()), "digit_score": score})
        return rows


@register_metric("world:style")
class WorldStyleMetric(Metric):
    """Style adherence (or character presence): the probability of the target style.

    Options: ``style``, the target when an image's metadata names none; ``evaluators``, a folder of
    trained evaluators instead of the shipped ones.
    """

    level = "image"

    def __init__(self, style: str | None = None, evaluators: str | None = None) -> None:
        options = {"style": style, "evaluators": evaluators}
        super().__init__(**{k: v for k, v in options.items() if v is not None})

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        evaluators = _load(self.options.get("evaluators"))
        probabilities = evaluators.style_probabilities([r.image for r in records])
        rows = []
        for record, p in zip(records, probabilities, strict=True):
            target = record.meta.get("style", self.options.get("style"))
            if target is not None and target not in evaluators.styles:
                raise ConfigError(
                    f"world:style: unknown style {target!r}; known: {', '.join(evaluators.styles)}"
                )
            score = float(p[evaluators.styles.index(target)]) if target is not None else float("nan")
            rows.append({"style_pred": evaluators.styles[int(p.argmax())], "style_score": score})
        return rows
