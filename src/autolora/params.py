"""``GenerationParams``: the one declaration of what a generation takes, and every check on it.

``generate`` reads its options from it, ``autolora generate`` derives its flags from its fields, a sweep's
``[generate]`` / variant / grid keys are its fields, PNG metadata is its ``record()``, and
``AutoLoRAGuidance`` validates through it. A new guidance method's options are new fields here, each
declared with ``_option`` (help text, check, the methods that use it, its CLI flag): every layer above
picks them up from this one place. Checks run when the object is built, so before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from autolora.delta_cache import DeltaCachePolicy
from autolora.errors import ConfigError
from autolora.guidance import CADSSchedule, GuidanceSchedule

Method = Literal["autolora", "lora", "base"]
BranchMode = Literal["batched", "sequential"]
METHODS: tuple[str, ...] = get_args(Method)

# A field's check: (value, where) -> the value in its canonical type; raises ConfigError naming ``where``.
Check = Callable[[Any, str], Any]


# --- Field checks (each returns the canonical value; ``where`` names the field as the user wrote it) ------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real(minimum: float, why: str = "") -> Check:
    """A finite number >= ``minimum``, as a float."""

    def check(value: Any, where: str) -> float:
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if not value >= minimum:
            raise ConfigError(f"{where} must be >= {minimum:g}{why}, got {value!r}")
        return float(value)

    check.parse = parse_number  # type: ignore[attr-defined]  # its text form, for the CLI
    return check


def _integer(minimum: int, multiple_of: int = 1) -> Check:
    def check(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if value < minimum or value % multiple_of:
            kind = f"a multiple of {multiple_of} >= {minimum}" if multiple_of > 1 else f">= {minimum}"
            raise ConfigError(f"{where} must be {kind}, got {value!r}")
        return value

    check.parse = parse_integer  # type: ignore[attr-defined]
    return check


def _choice(choices: Any) -> Check:
    options = get_args(choices)

    def check(value: Any, where: str) -> str:
        if value not in options:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(options)}")
        return value

    check.choices = options  # type: ignore[attr-defined]  # the CLI offers them as argparse choices
    return check


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _interval(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{where} must be two fractions [a, b], got {value!r}")
    start, end = (_real(0.0)(v, where) for v in value)
    if not start <= end <= 1.0:
        raise ConfigError(f"{where} must satisfy 0 <= a <= b <= 1, got {value!r}")
    return start, end


def _pair(low: float, high: float, what: str) -> Check:
    """Two numbers ``low <= a <= b <= high``, as a tuple of floats."""

    def check(value: Any, where: str) -> tuple[float, float]:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ConfigError(f"{where} must be two {what} [a, b], got {value!r}")
        a, b = (_real(low)(v, where) if not (_is_number(v) and math.isinf(v)) else float(v) for v in value)
        if not low <= a <= b <= high:
            raise ConfigError(f"{where} must satisfy {low:g} <= a <= b <= {high:g}, got {value!r}")
        return a, b

    return check


def _fraction(value: Any, where: str) -> float:
    number = _real(0.0)(value, where)
    if number > 1:
        raise ConfigError(f"{where} must lie in [0, 1], got {value!r}")
    return number


def _reference(value: Any, where: str) -> str | float | dict[str, float]:
    if value == "base":
        return "base"
    if isinstance(value, Mapping) and all(isinstance(name, str) for name in value):
        return {name: _real(0.0)(scale, f"{where}.{name}") for name, scale in value.items()}
    if _is_number(value):
        return _real(0.0, " (a LoRA scale)")(value, where)
    raise ConfigError(f"{where} must be 'base', a LoRA scale >= 0 or a table adapter -> scale, got {value!r}")


# --- Text forms of the values (command-line flags) --------------------------------------------------------


def parse_number(text: str, where: str) -> float:
    """A finite float from ``text``, or a ConfigError naming ``where``."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {text!r} is not a finite number")
    return value


def parse_integer(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an integer") from None


def parse_interval(text: str, where: str = "--interval") -> tuple[float, float]:
    """Parse ``A,B``, the part of the trajectory where AutoLoRA applies (its range is checked by the field)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ConfigError(f"{where} {text!r} is malformed: expected two numbers A,B such as 0,0.5")
    start, end = (parse_number(p, f"{where} {text}") for p in parts)
    return start, end


def parse_reference(text: str, where: str = "--reference") -> str | float:
    """``base`` or a scale of the loaded LoRAs, as ``generate``'s ``reference`` takes it."""
    return text if text == "base" else parse_number(text, f"{where} (base or a LoRA scale)")


def _identity(text: str, where: str) -> str:
    return text


@dataclass(frozen=True)
class LoRASpec:
    """One LoRA to load into the pipeline: ``autolora.load_lora``'s arguments."""

    source: str  # a file, folder, Hub id, or an alias such as "world:NAME"
    scale: float = 1.0
    adapter_name: str | None = None  # default: derived from the file name
    weight_name: str | None = None  # the file inside a Hub repository or folder


# --- The declaration ----------------------------------------------------------------------------------------

_WITH_LORA = frozenset({"autolora", "lora"})
# The CFG baselines change one model's own CFG: the LoRA's or the base model's, not AutoLoRA's two branches.
_ONE_MODEL = frozenset({"lora", "base"})


def _option(
    default: Any,
    check: Check,
    help: str,
    *,
    methods: frozenset[str] = frozenset(METHODS),
    flag: str | None = "",
    parse: Callable[[str, str], Any] | None = None,
    metavar: str | None = None,
    group: str = "guidance",
    sweep: bool = True,
) -> Any:
    """One generation option.

    ``methods``: the methods whose images depend on it (others record None and ignore it in sweeps);
    ``flag``: its ``autolora generate`` flag ("" = ``--name-with-dashes``, None = none); ``parse``: its
    text form (default: the check's, numbers for numbers); ``group``: its section of the CLI help;
    ``sweep``: whether a sweep may set it.
    """
    metadata = {
        "help": help,
        "check": check,
        "methods": methods,
        "flag": flag,
        "parse": parse or getattr(check, "parse", _identity),
        "metavar": metavar,
        "group": group,
        "sweep": sweep,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _cfg_scale_option(symbol: str, branch: str, methods: frozenset[str]) -> Any:
    """The CFG scale of one branch; None takes the model's default."""
    help = f"CFG scale {symbol.lower()} of the {branch} branch (default: the model's, e.g. 7.5 for SD1.5)"
    check = _real(1.0, " (1 = no classifier-free guidance)")
    return _option(None, check, help, methods=methods, metavar=symbol)


@dataclass(frozen=True)
class GenerationParams:
    """Everything that decides a generation's pixels besides the pipeline, its LoRAs and the prompt.

    See docs/guidance.md for each field. Build it with keywords; a wrong value raises ``ConfigError``
    naming the field. Values are kept in canonical types (floats, a tuple interval), so equal
    settings compare equal however they were written (``5`` or ``5.0``, a list or a tuple).
    """

    method: Method = _option(
        "autolora",
        _choice(Method),
        "autolora: base CFG guided towards LoRA CFG (Eq. 7); lora: LoRA with CFG; base: base model with CFG",
    )
    gamma: float = _option(
        1.5, _real(0.0), "AutoLoRA guidance scale gamma", methods=frozenset({"autolora"}), metavar="G"
    )
    gamma_end: float | None = _option(
        None,
        _real(0.0),
        "gamma at the last step, for a linear schedule from gamma (default: constant gamma)",
        methods=frozenset({"autolora"}),
        metavar="G2",
    )
    interval: tuple[float, float] = _option(
        (0.0, 1.0),
        _interval,
        "part of the denoising trajectory, 0 <= A <= B <= 1 (0 = first step), where AutoLoRA guidance "
        "applies; other steps are plain LoRA CFG",
        methods=frozenset({"autolora"}),
        parse=parse_interval,
        metavar="A,B",
    )
    cfg_base: float | None = _cfg_scale_option("W1", "base", frozenset({"autolora", "base"}))
    cfg_lora: float | None = _cfg_scale_option("W2", "LoRA", _WITH_LORA)
    # The CLI's --lora-scale is the scale LoRAs are loaded with, so this generate-time override has no flag.
    lora_scale: float | None = _option(
        None,
        _real(0.0),
        "scale of every active adapter during this generation (default: the scales they were loaded with)",
        methods=_WITH_LORA,
        flag=None,
    )
    reference: str | float | dict[str, float] = _option(
        "base",
        _reference,
        "the reference branch AutoLoRA extrapolates from: base, the base model with CFG W1, or a scale: "
        "the same LoRAs at that scale, e.g. 0.5",
        methods=frozenset({"autolora"}),
        parse=parse_reference,
        metavar="base|SCALE",
    )
    branch_mode: BranchMode = _option(
        "batched",
        _choice(BranchMode),
        "evaluate the base and LoRA branches in one batch or one after the other",
        methods=frozenset({"autolora"}),
    )
    cache_interval: int = _option(
        1,
        _integer(1),
        "evaluate the reference branch on every K-th guided step only and reuse its AutoLoRA delta "
        "cfg_lora - cfg_base in between (1 = every step, full AutoLoRA)",
        methods=frozenset({"autolora"}),
        metavar="K",
    )
    cache_threshold: float | None = _option(
        None,
        _real(0.0),
        "adaptive delta cache: also evaluate the reference branch once the LoRA prediction has drifted by "
        "more than T (relative L1, summed over steps) since it last was; needs a cache interval > 1, which "
        "then bounds the steps between evaluations",
        methods=frozenset({"autolora"}),
        metavar="T",
    )
    # Kynkäänniemi et al. 2024: CFG only at noise levels in (sigma_lo, sigma_hi]; the conditional model elsewhere.
    cfg_interval: tuple[float, float] | None = _option(
        None,
        _pair(0.0, math.inf, "noise levels"),
        "CFG only at noise levels sigma in (LO, HI] (EDM sigma; SDXL's paper setting: 0.28,5.42), the "
        "conditional prediction alone elsewhere (default: CFG at every step)",
        methods=_ONE_MODEL,
        parse=parse_interval,
        metavar="LO,HI",
    )
    # Sadat et al. 2024 (CADS): noise on the conditioning, annealed away over the trajectory.
    cads_noise: float | None = _option(
        None,
        _real(0.0),
        "CADS noise scale s on the text conditioning, e.g. 0.25 (default: no CADS)",
        methods=_ONE_MODEL,
        metavar="S",
    )
    cads_tau: tuple[float, float] = _option(
        (0.6, 0.9),
        _pair(0.0, 1.0, "times"),
        "CADS annealing: full noise above time TAU2, none below TAU1 (1 = pure noise)",
        methods=_ONE_MODEL,
        parse=parse_interval,
        metavar="TAU1,TAU2",
    )
    cads_psi: float = _option(
        1.0,
        _fraction,
        "CADS rescaling mix psi in [0, 1] (1: the conditioning keeps its mean and spread)",
        methods=_ONE_MODEL,
        parse=parse_number,
        metavar="PSI",
    )
    negative_prompt: str | None = _option(
        None, _text, "negative prompt (default: none)", metavar="N", group="prompt"
    )
    num_inference_steps: int | None = _option(
        None,
        _integer(1),
        "denoising steps (default: the pipeline's)",
        flag="--steps",
        metavar="K",
        group="prompt",
    )
    height: int | None = _option(
        None, _integer(8, 8), "image height in pixels, a multiple of 8", metavar="H", group="prompt"
    )
    width: int | None = _option(
        None, _integer(8, 8), "image width in pixels, a multiple of 8", metavar="W", group="prompt"
    )
    seed: int = _option(
        0,
        _integer(0),
        "seed of the first image; image i uses seed+i",
        metavar="S",
        group="prompt",
        sweep=False,
    )
    # Image i starts from seed + i whatever the batch, so no image depends on num_images (methods: none).
    num_images: int = _option(
        1,
        _integer(1),
        "images per method",
        methods=frozenset(),
        metavar="N",
        group="prompt",
        sweep=False,
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, self.check_field(field.name, getattr(self, field.name)))
        if (self.height is None) != (self.width is None):
            raise ConfigError("height and width must be given together")
        DeltaCachePolicy(interval=self.cache_interval, threshold=self.cache_threshold)  # checks them together

    @property
    def cache(self) -> DeltaCachePolicy:
        """When the delta cache evaluates the reference branch."""
        return DeltaCachePolicy(interval=self.cache_interval, threshold=self.cache_threshold)

    @classmethod
    def check_field(cls, name: str, value: Any, where: str | None = None) -> Any:
        """``value`` checked as field ``name`` (``where``: how the user named it) in its canonical type."""
        field = _FIELDS.get(name)
        if field is None:
            raise ConfigError(f"{where or name}: unknown generation parameter; known: {', '.join(_FIELDS)}")
        if value is None and field.default is None:
            return None
        return field.metadata["check"](value, where or name)

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], base: GenerationParams | None = None
    ) -> tuple[GenerationParams, dict[str, Any]]:
        """Split keyword ``options`` into GenerationParams (over ``base``) and the rest (the pipeline's)."""
        ours = {key: value for key, value in options.items() if key in _FIELDS}
        params = cls(**ours) if base is None else dataclasses.replace(base, **ours)
        return params, {key: value for key, value in options.items() if key not in _FIELDS}

    @property
    def cads(self) -> CADSSchedule | None:
        """CADS's settings, or None when it is off."""
        if self.cads_noise is None:
            return None
        return CADSSchedule(noise_scale=self.cads_noise, tau=self.cads_tau, psi=self.cads_psi)

    @property
    def schedule(self) -> GuidanceSchedule:
        """When AutoLoRA applies and with which gamma."""
        return GuidanceSchedule(gamma=self.gamma, gamma_end=self.gamma_end, interval=self.interval)

    @staticmethod
    def used_by(name: str, method: str) -> bool:
        """Whether the images of ``method`` depend on field ``name``."""
        return method in _FIELDS[name].metadata["methods"]

    def record(self) -> dict[str, Any]:
        """The fields as plain values (PNG metadata, indexes); fields the method ignores are None."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {name: value if self.used_by(name, self.method) else None for name, value in values.items()}


_FIELDS: dict[str, dataclasses.Field] = {field.name: field for field in dataclasses.fields(GenerationParams)}

#: Field names a sweep may set in ``[generate]``, a variant or its grid (seeds and batch size are its own).
SWEEP_FIELDS: tuple[str, ...] = tuple(name for name, field in _FIELDS.items() if field.metadata["sweep"])


def cli_fields() -> list[dataclasses.Field]:
    """The fields ``autolora generate`` offers as flags, with their flag in ``metadata['flag']``."""
    return [field for field in _FIELDS.values() if field.metadata["flag"] is not None]


def cli_flag(field: dataclasses.Field) -> str:
    """The command-line flag of ``field``."""
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def cli_args(params: GenerationParams) -> list[str]:
    """The ``autolora generate`` flags that parse back to ``params``: every field with a flag, off its default.

    The inverse of the CLI's parsing, so a command line shown to a user makes the same images.
    """
    argv = []
    for field in cli_fields():
        value = getattr(params, field.name)
        if value != field.default:
            argv += [cli_flag(field), _flag_text(value, cli_flag(field))]
    return argv


def _flag_text(value: Any, flag: str) -> str:
    """``value`` as its flag reads it back exactly: ``2`` for 2.0, every significant digit otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return ",".join(_flag_text(v, flag) for v in value)
    if _is_number(value):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    raise ConfigError(f"{flag}: {value!r} has no command-line form")
