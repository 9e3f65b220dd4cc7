"""Handwritten digits rendered in parameterised, seeded styles: the domains of the miniature world.

scikit-learn ships 1,797 8x8 handwritten digits. A ``Style`` turns one of them into a small RGB
image: it chooses ink and background colours from palettes, a stroke weight, slant, rotation,
scale and shift from ranges, and optional effects (outline, drop shadow, glow, background
texture). Every draw comes from a ``numpy`` generator, so a style plus a seed gives the same
image, while different seeds give the natural variety that diversity metrics measure.

The ``base`` style is what the base model learns, with its attributes named in captions
("a bold red seven on yellow"); the others are unseen by the base model and are what the
few-shot LoRAs learn, reached through their trigger words. Beside the named styles,
``random_style(seed)`` draws a style from a continuous space (colours, texture and its
parameters, effects, slant, rotation and weight ranges), each with its own trigger word: the
domains of a LoRA bank, and of styles no network of the world has seen.
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
TEXTURES: tuple[Texture, ...] = ("solid", "stripes", "checker", "noise", "gradient")
#: A colour is a name from ``COLOURS`` or an RGB triple in [0, 1].
Colour = str | tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    """A domain of images: palettes to choose from, ranges to draw from, and effects."""

    name: str
    kind: Literal["base", "style", "character"]
    ink: tuple[Colour, ...]
    background: tuple[Colour, ...]
    weight: tuple[str, ...] = ("thin", "regular", "bold")
    texture: Texture = "solid"
    texture_colour: tuple[Colour, ...] = ()
    #: Stripes: direction of the stripes' normal in degrees and period in pixels, each drawn from a range.
    stripe_angle: tuple[float, float] = (45.0, 45.0)
    stripe_period: tuple[float, float] = (3.5, 5.0)
    #: Checkerboard: cell size in pixels, drawn from a range.
    checker_size: tuple[float, float] = (3.5, 5.0)
    #: Noise texture: standard deviation of the per-pixel mix between background and texture colour.
    noise_level: float = 0.35
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
        colours = (*self.ink, *self.background, *self.texture_colour)
        unknown = [c for c in colours if isinstance(c, str) and c not in COLOURS]
        if unknown:
            raise ConfigError(f"style {self.name!r}: unknown colours {unknown}; known: {sorted(COLOURS)}")
        if any(not isinstance(c, str) and (len(c) != 3 or not all(0 <= v <= 1 for v in c)) for c in colours):
            raise ConfigError(f"style {self.name!r}: RGB colours need three values in [0, 1]")
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


RANDOM_PREFIX = "random-"
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]
#: Trigger words are three syllables, so there are this many distinct random styles.
RANDOM_STYLES = len(_SYLLABLES) ** 3
#: The random styles the VAE and evaluators train on; styles of other seeds are never seen by any
#: network of the world until a LoRA is trained on one.
RANDOM_TRAINING_SEEDS = range(100_000, 200_000)


def trigger_word(seed: int) -> str:
    """The made-up three-syllable word that names random style ``seed``; distinct seeds, distinct words.

    Trigger words are not in the world's vocabulary: like a rare word in SD's tokenizer, each one
    tokenizes into pieces (here its letters) whose embeddings the base model never trained.
    """
    if not 0 <= seed < RANDOM_STYLES:
        raise ConfigError(f"random style seeds run from 0 to {RANDOM_STYLES - 1}, got {seed}")
    # An affine bijection of the seed range, so neighbouring seeds do not share their first syllables.
    code = (seed * 104_729 + 12_345) % RANDOM_STYLES
    n = len(_SYLLABLES)
    return _SYLLABLES[code // n**2] + _SYLLABLES[code // n % n] + _SYLLABLES[code % n]


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _palette(rng: np.random.Generator, textured: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background, texture and ink colours, uniform in RGB, redrawn until the digit stays legible.

    The ink's luminance differs from the background's and the texture's by at least 0.3, and the
    texture is at least 0.25 away from the background in RGB, so that it shows.
    """
    while True:
        background, texture, ink = rng.uniform(0.0, 1.0, (3, 3))
        papers = (background, texture) if textured else (background,)
        legible = all(abs(_luminance(ink) - _luminance(paper)) >= 0.3 for paper in papers)
        if legible and (not textured or np.linalg.norm(texture - background) >= 0.25):
            return background, texture, ink


def random_style(seed: int) -> Style:
    """A style drawn from the continuous style space, named ``random-<seed>`` with its own trigger word.

    Background, texture and ink colours are uniform in RGB with enough luminance contrast between
    ink and paper to keep the digit legible; the texture (solid, stripes with angle and period,
    checker with cell size, noise, gradient), the effects (outline, shadow, glow) and the ranges of
    slant, rotation, scale and stroke weight are drawn too.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    background, texture_colour, ink = _palette(rng, textured=texture != "solid")
    slant, rotation = rng.uniform(-0.5, 0.5), rng.uniform(-20.0, 20.0)
    first_weight = rng.integers(len(WEIGHTS))
    weights = tuple(WEIGHTS)[first_weight : first_weight + rng.integers(1, 3)]
    outline, shadow, glow = (bool(flag) for flag in rng.random(3) < 0.25)
    outline = outline and not glow  # a glowing outline would hide the hollow stroke
    period, cell = rng.uniform(3.0, 7.0), rng.uniform(3.0, 7.0)
    effects = [name for name, on in (("outline", outline), ("shadow", shadow), ("glow", glow)) if on]

    def rgb(colour: np.ndarray) -> tuple[float, float, float]:
        return tuple(round(float(v), 3) for v in colour)

    return Style(
        f"{RANDOM_PREFIX}{seed}",
        "style",
        ink=(rgb(ink),),
        background=(rgb(background),),
        weight=weights,
        texture=texture,
        texture_colour=(rgb(texture_colour),) if texture != "solid" else (),
        stripe_angle=(a := rng.uniform(0.0, 180.0), a),
        stripe_period=(period, period * 1.2),
        checker_size=(cell, cell * 1.2),
        noise_level=rng.uniform(0.15, 0.4),
        slant=(slant - 0.08, slant + 0.08),
        rotation=(rotation - 8.0, rotation + 8.0),
        outline=outline,
        shadow=shadow,
        glow=glow,
        trigger=trigger_word(seed),
        description=f"random style {seed}: {texture} background" + "".join(f", {e}" for e in effects),
    )


def get_style(name: str) -> Style:
    """The style called ``name``: a named style or ``random-<seed>``; unknown names raise ``ConfigError``."""
    if name.startswith(RANDOM_PREFIX) and name.removeprefix(RANDOM_PREFIX).isdigit():
        return random_style(int(name.removeprefix(RANDOM_PREFIX)))
    try:
        return STYLES[name]
    except KeyError:
        raise ConfigError(
            f"unknown style {name!r}; available: {', '.join(STYLES)} or {RANDOM_PREFIX}<seed>"
        ) from None


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


def _colour(colour: Colour, jitter: float, rng: np.random.Generator) -> np.ndarray:
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return np.clip(np.asarray(rgb) + rng.normal(0.0, jitter, 3), 0.0, 1.0)


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
        period = rng.uniform(*style.stripe_period) * _SUPERSAMPLE
        angle = np.deg2rad(rng.uniform(*style.stripe_angle))
        across = np.cos(angle) * x + np.sin(angle) * y + rng.uniform(0, period)
        mask = (np.sin(across * 2 * np.pi / period) > 0).astype(np.float32)
    elif style.texture == "checker":
        cell = rng.uniform(*style.checker_size) * _SUPERSAMPLE
        phase = rng.uniform(0, cell, 2)
        mask = (((x + phase[0]) // cell + (y + phase[1]) // cell) % 2).astype(np.float32)
    elif style.texture == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * (x - size / 2) + np.sin(angle) * (y - size / 2)) / size + 0.5
        mask = np.clip(ramp, 0.0, 1.0)
    else:  # noise
        mask = np.clip(rng.normal(0.5, style.noise_level, (size, size)), 0.0, 1.0)
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
    style: str | Style, count: int, seed: int, *, split: Literal["train", "held_out", "all"] = "train"
) -> list[Sample]:
    """``count`` images of one style (or style name) from random digits of ``split``, reproducible from ``seed``.

    A character style only draws its own digit.
    """
    style = get_style(style) if isinstance(style, str) else style
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


def sample_styles(
    counts: dict[str, int], seed: int, *, split: Literal["train", "held_out", "all"] = "train"
) -> list[Sample]:
    """``counts[name]`` images of each style name (named or ``random-<seed>``), each style its own seed."""
    return [
        s for i, (name, n) in enumerate(counts.items()) for s in sample_style(name, n, seed + i, split=split)
    ]


def random_style_names(seeds: range) -> list[str]:
    """The names ``random-<seed>`` of the random styles of ``seeds``."""
    return [f"{RANDOM_PREFIX}{seed}" for seed in seeds]
