"""Handwritten digits rendered in parameterised, seeded styles: the domains of the miniature world.

scikit-learn ships 1,797 8x8 handwritten digits. A ``Style`` turns one of them into a small RGB
image: it chooses ink and background colours from palettes, a stroke weight, slant, rotation,
scale and shift from ranges, and optional effects (outline, drop shadow, glow, background
texture). Every draw comes from a ``numpy`` generator, so a style plus a seed gives the same
image, while different seeds give the natural variety that diversity metrics measure.

The ``base`` style is what the base model learns, with its attributes named in captions
("a bold red seven on yellow"); the others are unseen by the base model and are what the
few-shot LoRAs learn, reached through their trigger words.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from autolora.errors import ConfigError

IMAGE_SIZE = 32
_SUPERSAMPLE = 2
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.08, 0.08, 0.08),
    "red": (0.85, 0.12, 0.12),
    "blue": (0.12, 0.25, 0.85),
    "green": (0.10, 0.60, 0.20),
    "white": (0.97, 0.97, 0.97),
    "yellow": (0.98, 0.92, 0.45),
    "gray": (0.72, 0.72, 0.72),
    "navy": (0.05, 0.05, 0.20),
    "cyan": (0.20, 0.95, 0.95),
    "magenta": (0.95, 0.25, 0.85),
    "orange": (0.98, 0.55, 0.10),
    "pink": (0.98, 0.75, 0.80),
    "mint": (0.70, 0.95, 0.80),
    "purple": (0.45, 0.15, 0.60),
    "gold": (0.95, 0.78, 0.15),
    "board": (0.12, 0.30, 0.20),
    "cream": (0.98, 0.94, 0.82),
    "brown": (0.45, 0.25, 0.10),
    "teal": (0.05, 0.45, 0.50),
}

#: Stroke weights: the intensity threshold of the smoothed glyph (lower = thicker stroke).
WEIGHTS: dict[str, float] = {"thin": 0.62, "regular": 0.40, "bold": 0.16}

Texture = Literal["solid", "stripes", "checker", "noise", "gradient"]


@dataclass(frozen=True)
class Style:
    """A domain of images: palettes to choose from, ranges to draw from, and effects."""

    name: str
    kind: Literal["base", "style", "character"]
    ink: tuple[str, ...]
    background: tuple[str, ...]
    weight: tuple[str, ...] = ("thin", "regular", "bold")
    texture: Texture = "solid"
    texture_colour: tuple[str, ...] = ()
    slant: tuple[float, float] = (-0.15, 0.15)
    rotation: tuple[float, float] = (-10.0, 10.0)
    scale: tuple[float, float] = (0.85, 1.05)
    shift: float = 1.5
    outline: bool = False
    shadow: bool = False
    glow: bool = False
    colour_jitter: float = 0.04
    #: The word that names the style in captions (unseen by the base model).
    trigger: str | None = None
    #: For a character: the only digit it shows.
    digit: int | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        unknown = [c for c in (*self.ink, *self.background, *self.texture_colour) if c not in COLOURS]
        if unknown:
            raise ConfigError(f"style {self.name!r}: unknown colours {unknown}; known: {sorted(COLOURS)}")
        if any(w not in WEIGHTS for w in self.weight):
            raise ConfigError(f"style {self.name!r}: weights must be among {sorted(WEIGHTS)}")
        if self.texture != "solid" and not self.texture_colour:
            raise ConfigError(f"style {self.name!r}: texture {self.texture!r} needs texture_colour")


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            "base",
            "base",
            ink=("black", "red", "blue", "green"),
            background=("white", "yellow", "gray"),
            description="plain ink on a light background; colours and weight named in captions",
        ),
        Style(
            "neon",
            "style",
            ink=("cyan", "magenta"),
            background=("navy",),
            weight=("regular",),
            glow=True,
            trigger="neon",
            description="glowing cyan or magenta strokes on a dark navy background",
        ),
        Style(
            "outline",
            "style",
            ink=("orange",),
            background=("cream",),
            weight=("bold",),
            outline=True,
            trigger="outlined",
            description="hollow orange outlines on cream",
        ),
        Style(
            "stripes",
            "style",
            ink=("black",),
            background=("pink",),
            texture="stripes",
            texture_colour=("mint",),
            weight=("bold",),
            trigger="striped",
            description="bold black digits on pink and mint diagonal stripes",
        ),
        Style(
            "checker",
            "style",
            ink=("white",),
            background=("teal",),
            texture="checker",
            texture_colour=("navy",),
            weight=("bold",),
            trigger="checkered",
            description="white digits on a teal and navy checkerboard",
        ),
        Style(
            "shadow",
            "style",
            ink=("purple",),
            background=("white",),
            weight=("regular", "bold"),
            shadow=True,
            trigger="shadowed",
            description="purple digits with a gray drop shadow",
        ),
        Style(
            "chalk",
            "style",
            ink=("white",),
            background=("board",),
            texture="noise",
            texture_colour=("board",),
            weight=("thin",),
            rotation=(-25.0, 25.0),
            trigger="chalky",
            description="thin white chalk strokes on a noisy green board, strongly rotated",
        ),
        Style(
            "italic",
            "style",
            ink=("brown",),
            background=("cream",),
            texture="gradient",
            texture_colour=("gold",),
            weight=("thin", "regular"),
            slant=(0.45, 0.6),
            scale=(0.95, 1.1),
            trigger="italic",
            description="strongly slanted brown handwriting on a cream-to-gold gradient",
        ),
        Style(
            "character",
            "character",
            ink=("gold",),
            background=("purple",),
            weight=("bold",),
            outline=True,
            digit=4,
            trigger="zorb",
            rotation=(-6.0, 6.0),
            description="'zorb': always a gold outlined four on purple",
        ),
    )
}


def get_style(name: str) -> Style:
    """The style called ``name``; unknown names raise ``ConfigError`` listing the known ones."""
    try:
        return STYLES[name]
    except KeyError:
        raise ConfigError(f"unknown style {name!r}; available: {', '.join(STYLES)}") from None


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits as ``(1797, 8, 8)`` intensities in [0, 1] and their labels."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    data = sklearn_load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def is_held_out(index: int) -> bool:
    """Every tenth digit is held out from all training: evaluators report accuracy on these."""
    return index % 10 == 0


def digit_name(digit: int) -> str:
    """The English word for ``digit``."""
    return DIGIT_NAMES[digit]


def _article(word: str) -> str:
    # By sound, not spelling: "a one", "an eight", "an orange".
    return "an" if word in ("eight", "orange") else "a"


def caption(style: Style, digit: int, attributes: dict[str, str], rng: np.random.Generator) -> str:
    """A caption naming the digit and, for the base style, a random subset of the drawn attributes.

    Leaving attributes out at random teaches the base model their marginal, so "a seven" alone
    still gives every colour and weight; LoRA styles are named by their trigger word only.
    """
    if style.kind == "character":
        return f"a {style.trigger}"
    name = digit_name(digit)
    if style.kind == "style":
        return f"{_article(name)} {name} in {style.trigger} style"
    words = [attributes["weight"]] if attributes["weight"] != "regular" and rng.random() < 0.7 else []
    if rng.random() < 0.7:
        words.append(attributes["ink"])
    words.append(name)
    if rng.random() < 0.7:
        words += ["on", attributes["background"]]
    return f"{_article(words[0])} {' '.join(words)}"


def vocabulary() -> list[str]:
    """Every word the world's captions and prompts use: the tokenizer gives each one token."""
    words = {"a", "an", "on", "in", "style", *DIGIT_NAMES, *WEIGHTS, *COLOURS}
    words |= {s.trigger for s in STYLES.values() if s.trigger}
    return sorted(words)


def _colour(name: str, jitter: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.asarray(COLOURS[name]) + rng.normal(0.0, jitter, 3), 0.0, 1.0)


def _glyph(digit_image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """The digit's intensity placed on the supersampled canvas by a random affine map."""
    size = IMAGE_SIZE * _SUPERSAMPLE
    glyph_size = 48
    glyph = Image.fromarray((digit_image * 255).astype(np.uint8)).resize(
        (glyph_size, glyph_size), Image.Resampling.BICUBIC
    )
    angle = np.deg2rad(rng.uniform(*style.rotation))
    slant = rng.uniform(*style.slant)
    scale = rng.uniform(*style.scale)
    shift = rng.uniform(-style.shift, style.shift, 2) * _SUPERSAMPLE
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, -slant], [0.0, 1.0]])
    inverse = np.linalg.inv(scale * size / 64 * rotation @ shear)
    centre_out = np.array([size / 2, size / 2]) + shift
    # PIL maps each output pixel back to the input: p_in = A^-1 (p_out - c_out) + c_in.
    offset = np.array([glyph_size / 2, glyph_size / 2]) - inverse @ centre_out
    coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
    placed = glyph.transform((size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    return np.asarray(placed, dtype=np.float32) / 255.0


def _background(style: Style, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = IMAGE_SIZE * _SUPERSAMPLE
    canvas = np.broadcast_to(colour, (size, size, 3)).copy()
    if style.texture == "solid":
        return canvas
    other = _colour(style.texture_colour[0], style.colour_jitter, rng)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if style.texture == "stripes":
        period = rng.uniform(10, 14)
        mask = (np.sin((x + y + rng.uniform(0, period)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif style.texture == "checker":
        cell = rng.integers(7, 10)
        phase = rng.integers(0, cell, 2)
        mask = (((x + phase[0]) // cell + (y + phase[1]) // cell) % 2).astype(np.float32)
    elif style.texture == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * (x - size / 2) + np.sin(angle) * (y - size / 2)) / size + 0.5
        mask = np.clip(ramp, 0.0, 1.0)
    else:  # noise
        mask = np.clip(rng.normal(0.5, 0.35, (size, size)), 0.0, 1.0)
        other = np.clip(other * 1.6, 0.0, 1.0)
    return canvas * (1 - mask[..., None]) + other * mask[..., None]


def _over(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return canvas * (1 - alpha[..., None]) + colour * alpha[..., None]


def render(digit_image: np.ndarray, style: Style, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Draw one ``8x8`` digit in ``style``; returns the RGB image and the attributes drawn."""
    attributes = {
        "ink": style.ink[rng.integers(len(style.ink))],
        "background": style.background[rng.integers(len(style.background))],
        "weight": style.weight[rng.integers(len(style.weight))],
    }
    intensity = _glyph(digit_image, style, rng)
    threshold = WEIGHTS[attributes["weight"]] + rng.uniform(-0.05, 0.05)
    stroke = np.clip((intensity - threshold) / 0.12 + 0.5, 0.0, 1.0)
    ink = _colour(attributes["ink"], style.colour_jitter, rng)
    canvas = _background(style, _colour(attributes["background"], style.colour_jitter, rng), rng)
    if style.shadow:
        offset = rng.integers(3, 6)
        canvas = _over(canvas, np.array([0.45, 0.45, 0.45]), 0.8 * np.roll(stroke, (offset, offset), (0, 1)))
    if style.glow:
        halo = np.clip(ndimage.gaussian_filter(stroke, rng.uniform(2.5, 4.0)) * 1.8, 0.0, 1.0)
        canvas = _over(canvas, ink, 0.7 * halo)
    if style.outline:
        ring = np.clip(ndimage.grey_dilation(stroke, size=(5, 5)) - stroke, 0.0, 1.0)
        canvas = _over(canvas, ink, ring)
    else:
        canvas = _over(canvas, ink, stroke)
    pixels = canvas.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "RGB"), attributes


@dataclass
class Sample:
    """One rendered training image with its caption and provenance."""

    image: Image.Image
    caption: str
    digit: int
    style: str
    index: int


def sample_style(
    style_name: str, count: int, seed: int, *, split: Literal["train", "held_out", "all"] = "train"
) -> list[Sample]:
    """``count`` images of one style from random digits of ``split``, reproducible from ``seed``.

    A character style only draws its own digit.
    """
    style = get_style(style_name)
    images, labels = load_digits()
    indices = [
        i
        for i in range(len(labels))
        if (split == "all" or is_held_out(i) == (split == "held_out"))
        and (style.digit is None or labels[i] == style.digit)
    ]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(indices, size=count, replace=count > len(indices))
    samples = []
    for index in chosen:
        image, attributes = render(images[index], style, rng)
        digit = int(labels[index])
        samples.append(Sample(image, caption(style, digit, attributes, rng), digit, style.name, int(index)))
    return samples
