"""The miniature world's evaluators: digit and style classifiers and a diversity feature extractor.

The paper measures prompt correspondence with CLIP, style adherence with a judge and
diversity with DINOv2 features. Here three small networks, trained on rendered digits with
held-out digits for accuracy, play those parts:

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
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from autolora.errors import ConfigError, InputFileError
from autolora.metrics.features import FeatureExtractor, register_extractor
from autolora.metrics.registry import ImageRecord, Metric, register_metric
from autolora.world.assets import ASSETS_DIR
from autolora.world.styles import DIGIT_NAMES, IMAGE_SIZE, STYLES, sample_style
from autolora.world.training import StageResult, images_to_tensor, run_stage, write_json

EVALUATORS_DIR = ASSETS_DIR / "evaluators"
WIDTH = 16
FEATURE_DIM = 32
TRAIN_STEPS = 1500
BATCH = 64
TRAIN_RENDERS = {"base": 2400, **{name: 400 for name in STYLES if name != "base"}}
HELD_OUT_RENDERS = 150


class ConvNet(nn.Module):
    """Three strided convolutions and global average pooling to ``out_dim`` outputs."""

    def __init__(self, out_dim: int, width: int = WIDTH) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixels))


class Decoder(nn.Module):
    """Maps a feature code back to a 32x32 image; only used to train the feature extractor."""

    def __init__(self, in_dim: int = FEATURE_DIM, width: int = WIDTH) -> None:
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


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half of the batch: generated images are softer than renders."""
    blurred = nn.functional.avg_pool2d(pixels, 3, stride=1, padding=1, count_include_pad=False)
    chosen = torch.rand(len(pixels), generator=generator) < 0.5
    return torch.where(chosen[:, None, None, None], blurred, pixels)


def _dataset(
    split: str, counts: Mapping[str, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    style_names = list(STYLES)
    samples = [
        s for i, (name, n) in enumerate(counts.items()) for s in sample_style(name, n, seed + i, split=split)
    ]
    pixels = images_to_tensor([s.image for s in samples])
    digits = torch.tensor([s.digit for s in samples])
    styles = torch.tensor([style_names.index(s.style) for s in samples])
    return pixels, digits, styles


def train_evaluators(out: Path, seed: int, work: Path) -> tuple[StageResult, dict[str, float]]:
    """Stage 4: train the three networks on training digits; held-out accuracy on the others."""
    pixels, digits, styles = _dataset("train", TRAIN_RENDERS, seed + 1000)
    torch.manual_seed(seed)
    digit_net, style_net = ConvNet(len(DIGIT_NAMES)), ConvNet(len(STYLES))
    encoder, decoder = ConvNet(FEATURE_DIM), Decoder()
    modules = {"digit": digit_net, "style": style_net, "encoder": encoder, "decoder": decoder}

    # Three independent objectives summed: each network only receives its own gradient.
    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pixels), (BATCH,), generator=generator)
        batch = _augment(pixels[index], generator)
        cross_entropy = nn.functional.cross_entropy
        return (
            cross_entropy(digit_net(batch), digits[index])
            + cross_entropy(style_net(batch), styles[index])
            + nn.functional.mse_loss(decoder(encoder(batch)), pixels[index])
        )

    parameters = [p for module in modules.values() for p in module.parameters()]
    result = run_stage(
        "evaluators",
        modules,
        parameters,
        loss_fn,
        steps=TRAIN_STEPS,
        seed=seed,
        learning_rate=2e-3,
        checkpoint=work / "evaluators.ckpt",
    )
    with torch.no_grad():
        mean_code = torch.cat([encoder(chunk) for chunk in pixels.split(512)]).mean(0)
        held_pixels, held_digits, held_styles = _dataset(
            "held_out", dict.fromkeys(STYLES, HELD_OUT_RENDERS), seed + 2000
        )
        accuracy = {
            "digit": float((digit_net(held_pixels).argmax(1) == held_digits).float().mean()),
            "style": float((style_net(held_pixels).argmax(1) == held_styles).float().mean()),
        }
    state = {f"digit.{k}": v for k, v in digit_net.state_dict().items()}
    state |= {f"style.{k}": v for k, v in style_net.state_dict().items()}
    state |= {f"features.{k}": v for k, v in encoder.state_dict().items()}
    state["features.mean"] = mean_code
    out_dir = out / "evaluators"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out_dir / "evaluators.safetensors")
    config = {
        "width": WIDTH,
        "feature_dim": FEATURE_DIM,
        "styles": list(STYLES),
        "held_out_accuracy": accuracy,
        "held_out_images": HELD_OUT_RENDERS * len(STYLES),
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
        network = ConvNet(out_dim, config["width"])
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


@register_extractor("world")
class WorldFeatureExtractor(FeatureExtractor):
    """Centred codes of the miniature world's autoencoder (the DINOv2 analogue for diversity)."""

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return load_evaluators().features(images)


_DIGIT_WORDS = re.compile(r"\b(" + "|".join(DIGIT_NAMES) + r")\b", re.IGNORECASE)


def prompted_digit(meta: Mapping[str, Any]) -> int | None:
    """The digit an image should show: ``meta["digit"]``, else the first digit word of the prompt."""
    if meta.get("digit") is not None:
        return int(meta["digit"])
    match = _DIGIT_WORDS.search(str(meta.get("prompt", "")))
    return DIGIT_NAMES.index(match.group(1).lower()) if match else None


@register_metric("world:digit")
class WorldDigitMetric(Metric):
    """Prompt correspondence: the probability that the image shows the prompted digit."""

    level = "image"

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        probabilities = load_evaluators().digit_probabilities([r.image for r in records])
        rows = []
        for record, p in zip(records, probabilities, strict=True):
            digit = prompted_digit(record.meta)
            score = float(p[digit]) if digit is not None else float("nan")
            rows.append({"digit_pred": int(p.argmax()), "digit_score": score})
        return rows


@register_metric("world:style")
class WorldStyleMetric(Metric):
    """Style adherence (or character presence): the probability of the target style."""

    level = "image"

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        evaluators = load_evaluators()
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
