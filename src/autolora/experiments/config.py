"""Declarative sweeps: a TOML (or YAML) file names the model, LoRAs, prompts, seeds, grid and metrics.

A sweep expands into work items, one image each: every *variant* (a named method setting,
e.g. "AutoLoRA+CFG") crossed with every point of the *grid* (the cartesian product of the
swept parameters), every prompt and every seed. Parameters merge in the order
``[generate]`` < variant < grid point, so the grid always has the last word.

Example::

    name = "my-sweep"
    model = "stabilityai/stable-diffusion-xl-base-1.0"
    prompts = ["Anna"]
    seeds = { start = 0, count = 16 }

    [[loras]]
    source = "anna.safetensors"

    [generate]
    num_inference_steps = 30

    [grid]
    lora_scale = [0.5, 1.0]

    [[variants]]
    name = "LoRA+CFG"
    method = "lora"
    cfg = 5.0

    [[variants]]
    name = "AutoLoRA+CFG"
    method = "autolora"
    cfg = 5.0

    [metrics]
    names = ["diversity"]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autolora.devices import DTYPES, TorchDType
from autolora.errors import ConfigError, InputFileError
from autolora.experiments.index import IMAGES_DIR
from autolora.params import SWEEP_FIELDS, GenerationParams, LoRASpec

#: Keys a sweep may set in ``[generate]``, a variant or the grid: the fields of ``GenerationParams``
#: (checked by them), and ``cfg``, the sweep's shorthand for ``cfg_base = cfg_lora`` (kept as a label).
GENERATION_KEYS: tuple[str, ...] = (*SWEEP_FIELDS, "cfg")


@dataclass(frozen=True)
class SeedRange:
    """Seeds ``start, start + 1, ..., start + count - 1``."""

    start: int = 0
    count: int = 1


@dataclass
class MetricsConfig:
    """Which metrics to compute on the finished images, and how to group them."""

    names: list[str] = field(default_factory=list)  # registered metric names
    # Per-metric options, e.g. {diversity = {extractor = "world"}}.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Image fields that form a group; None: the variant, every swept key and the prompt.
    group_by: list[str] | None = None


@dataclass
class Variant:
    """A named setting of the generation parameters; may also change the model or the LoRAs."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    loras: tuple[LoRASpec, ...] | None = None


@dataclass
class SweepConfig:
    """A validated sweep; build it with :func:`load_config` or :func:`parse_config`."""

    name: str
    model: str
    prompts: list[str]
    seeds: list[int]
    loras: tuple[LoRASpec, ...] = ()
    torch_dtype: TorchDType | None = None
    description: str = ""
    generate: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (what the run folder and the hash record)."""
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        """Short hash of the validated configuration, stored with every image."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]

    @property
    def group_by(self) -> list[str]:
        """Fields whose values form a metric group: as configured, or every axis of the sweep but the seed."""
        if self.metrics.group_by is not None:
            return list(self.metrics.group_by)
        return ["variant", *self.swept_keys(), "prompt"]

    def lora_specs(self) -> list[LoRASpec]:
        """Every LoRA the sweep loads (its own and its variants'), once each."""
        specs = [*self.loras, *(spec for variant in self.variants for spec in variant.loras or ())]
        return list(dict.fromkeys(specs))

    def swept_keys(self) -> list[str]:
        """Grid axes that take more than one value (variants are told apart by their name)."""
        return [key for key, values in self.grid.items() if len(values) > 1]

    def work_items(self) -> list[WorkItem]:
        """Every distinct image of the sweep, in a stable order: variant, grid point, prompt, seed.

        Grid points that differ only in parameters the variant's method ignores (gamma for
        plain LoRA, say) are the same image and appear once.
        """
        items: list[WorkItem] = []
        seen: set[str] = set()
        axes = list(self.grid)
        for variant in self.variants or [Variant(name="default")]:
            for point in itertools.product(*(self.grid[key] for key in axes)):
                params = _resolve_params(
                    {**self.generate, **variant.params, **dict(zip(axes, point, strict=True))}
                )
                for prompt_index, prompt in enumerate(self.prompts):
                    for seed in self.seeds:
                        item = WorkItem(
                            index=len(items),
                            variant=variant.name,
                            model=variant.model or self.model,
                            loras=variant.loras if variant.loras is not None else self.loras,
                            prompt=prompt,
                            prompt_index=prompt_index,
                            seed=seed,
                            params=params,
                        )
                        if item.key not in seen:
                            seen.add(item.key)
                            items.append(item)
        return items


@dataclass(frozen=True)
class WorkItem:
    """One image to generate: where it sits in the sweep and everything that determines its pixels."""

    index: int
    variant: str
    model: str
    loras: tuple[LoRASpec, ...]
    prompt: str
    prompt_index: int
    seed: int
    params: dict[str, Any]

    @property
    def setup(self) -> tuple[str, tuple[LoRASpec, ...]]:
        """What must be loaded to generate this item: the pipelines are cached on it."""
        return self.model, self.loras

    def record(self) -> dict[str, Any]:
        """The image's full parameters: stored in the PNG and the index."""
        return {
            "variant": self.variant,
            "model": self.model,
            "loras": [dataclasses.asdict(lora) for lora in self.loras],
            "prompt": self.prompt,
            "seed": self.seed,
            **self.params,
        }

    def generation(self, num_images: int = 1) -> GenerationParams:
        """The item's parameters as ``generate`` takes them, for ``num_images`` images from its seed."""
        params = {key: value for key, value in self.params.items() if key != "cfg"}
        return GenerationParams(**params, seed=self.seed, num_images=num_images)

    @functools.cached_property
    def key(self) -> str:
        """Unique, stable key of the image: a hash of its full parameters."""
        return hashlib.sha256(canonical_json(self.record()).encode()).hexdigest()[:24]

    @property
    def relative_path(self) -> str:
        """Where the image is saved inside the run folder."""
        return f"{IMAGES_DIR}/{_slug(self.variant)}/p{self.prompt_index:03d}-s{self.seed:06d}-{self.key[:12]}.png"


# --- Loading and validation -------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spacing, so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def available_presets() -> list[str]:
    """Names of the sweeps shipped with autolora (``paper-*`` and their ``mini-*`` counterparts)."""
    folder = resources.files("autolora.experiments") / "presets"
    return sorted(
        entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml")
    )


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep from a preset name or a ``.toml``/``.yaml`` file, apply ``key=value`` overrides, validate."""
    path = Path(source)
    if path.suffix.lower() in (".toml", ".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputFileError(f"sweep file {str(path)!r} does not exist")
        raw = _read_file(path)
        base_dir = path.parent
    elif str(source) in available_presets():
        with resources.as_file(resources.files("autolora.experiments") / "presets" / f"{source}.toml") as p:
            raw = _read_file(p)
            base_dir = p.parent
    else:
        raise ConfigError(
            f"{str(source)!r} is neither a sweep file nor a preset; presets: {', '.join(available_presets())}"
        )
    for override in overrides:
        apply_override(raw, override)
    return parse_config(raw, base_dir=base_dir)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputFileError(f"cannot parse sweep file {str(path)!r}: {error}") from None
    except Exception as error:  # yaml.YAMLError without importing yaml for TOML users
        raise InputFileError(f"cannot parse sweep file {str(path)!r}: {error}") from None
    if not isinstance(data, dict):
        raise InputFileError(f"sweep file {str(path)!r} must hold a table of settings")
    return data


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.0.c=value`` in ``raw``; the value is read as TOML (``[1, 2]``, ``true``, ``"x"``) or else a string."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} has no item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a table")


_TOP_KEYS = {
    "name",
    "description",
    "model",
    "torch_dtype",
    "loras",
    "prompts",
    "prompts_file",
    "seeds",
    "generate",
    "grid",
    "variants",
    "metrics",
    "batch_size",
}


def parse_config(raw: Mapping[str, Any], base_dir: Path | None = None) -> SweepConfig:
    """Validate a sweep given as a plain mapping; ``base_dir`` resolves a relative ``prompts_file``."""
    _check_keys(raw, _TOP_KEYS, "sweep")
    name = _required_key(raw, "name", str, "sweep")
    model = _required_key(raw, "model", str, "sweep")
    torch_dtype = raw.get("torch_dtype")
    if torch_dtype is not None and torch_dtype not in DTYPES:
        raise ConfigError(f"torch_dtype: {torch_dtype!r} is not one of {', '.join(DTYPES)}")
    batch_size = raw.get("batch_size", 1)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    generate = _check_params(raw.get("generate", {}), "generate")
    grid = _parse_grid(raw.get("grid", {}))
    variants = [
        _parse_variant(entry, i) for i, entry in enumerate(_as_list(raw.get("variants", []), "variants"))
    ]
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variants: names must be unique, got {names}")
    config = SweepConfig(
        name=name,
        description=str(raw.get("description", "")),
        model=model,
        torch_dtype=torch_dtype,
        loras=_parse_loras(raw.get("loras", []), "loras"),
        prompts=_parse_prompts(raw, base_dir),
        seeds=_parse_seeds(raw.get("seeds", [0])),
        generate=generate,
        grid=grid,
        variants=variants,
        metrics=_parse_metrics(raw.get("metrics", {})),
        batch_size=batch_size,
    )
    # Resolving every combination once catches conflicts (e.g. cfg with cfg_base) before any image is made.
    for variant in config.variants or [Variant(name="default")]:
        for point in itertools.product(*config.grid.values()):
            _resolve_params(
                {**generate, **variant.params, **dict(zip(grid, point, strict=True))}, where=variant.name
            )
    return config


def _required_key(raw: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{where}: missing required key {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise ConfigError(f"{where}.{key}: expected a non-empty {kind.__name__}, got {value!r}")
    return value


def _check_keys(raw: Any, allowed: set[str], where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _check_params(raw: Any, where: str) -> dict[str, Any]:
    _check_keys(raw, set(GENERATION_KEYS), where)
    for key, value in raw.items():
        _check_value(key, value, f"{where}.{key}")
    return dict(raw)


def _check_value(key: str, value: Any, where: str) -> None:
    GenerationParams.check_field("cfg_base" if key == "cfg" else key, value, where)


def _parse_grid(raw: Any) -> dict[str, list[Any]]:
    _check_keys(raw, set(GENERATION_KEYS), "grid")
    grid = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        for value in values:
            _check_value(key, value, f"grid.{key}")
        grid[key] = list(values)
    return grid


def _parse_variant(raw: Any, index: int) -> Variant:
    where = f"variants[{index}]"
    _check_keys(raw, {"name", "model", "loras", *GENERATION_KEYS}, where)
    name = _required_key(raw, "name", str, where)
    params = {key: value for key, value in raw.items() if key in GENERATION_KEYS}
    _check_params(params, f"variants[{index}] ({name})")
    model = raw.get("model")
    if model is not None and not (isinstance(model, str) and model.strip()):
        raise ConfigError(f"{where}.model: expected a non-empty string, got {model!r}")
    loras = _parse_loras(raw["loras"], f"{where}.loras") if "loras" in raw else None
    return Variant(name=name, params=params, model=model, loras=loras)


def _parse_loras(raw: Any, where: str) -> tuple[LoRASpec, ...]:
    specs = []
    allowed = {f.name for f in dataclasses.fields(LoRASpec)}
    for i, entry in enumerate(_as_list(raw, where)):
        _check_keys(entry, allowed, f"{where}[{i}]")
        source = entry.get("source", "")
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(
                f"{where}[{i}].source: no LoRA given; set it with"
                f" --set {where.replace('[', '.').replace(']', '')}.{i}.source=PATH_OR_HUB_ID"
            )
        scale = entry.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ConfigError(f"{where}[{i}].scale: expected a number, got {scale!r}")
        specs.append(LoRASpec(**{**entry, "scale": float(scale)}))
    return tuple(specs)


def _parse_prompts(raw: Mapping[str, Any], base_dir: Path | None) -> list[str]:
    if ("prompts" in raw) == ("prompts_file" in raw):
        raise ConfigError(
            "sweep: give exactly one of 'prompts' (a list) or 'prompts_file' (one prompt a line)"
        )
    if "prompts" in raw:
        prompts = _as_list(raw["prompts"], "prompts")
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ConfigError(f"prompts: expected a non-empty list of non-empty strings, got {prompts!r}")
        return list(prompts)
    path = Path(str(raw["prompts_file"]))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputFileError(f"prompts_file: cannot read {str(path)!r}: {error.strerror}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts_file: {str(path)!r} holds no prompt")
    return prompts


def _parse_seeds(raw: Any) -> list[int]:
    if isinstance(raw, Mapping):
        _check_keys(raw, {"start", "count"}, "seeds")
        seed_range = SeedRange(**raw)
        if not isinstance(seed_range.start, int) or seed_range.start < 0:
            raise ConfigError(f"seeds.start: expected an integer >= 0, got {seed_range.start!r}")
        if not isinstance(seed_range.count, int) or seed_range.count < 1:
            raise ConfigError(f"seeds.count: expected a positive integer, got {seed_range.count!r}")
        return list(range(seed_range.start, seed_range.start + seed_range.count))
    seeds = _as_list(raw, "seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(
            f"seeds: expected a non-empty list of integers >= 0 or {{start, count}}, got {raw!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: repeated seeds in {seeds!r}")
    return list(seeds)


def _parse_metrics(raw: Any) -> MetricsConfig:
    _check_keys(raw, {f.name for f in dataclasses.fields(MetricsConfig)}, "metrics")
    names = _as_list(raw.get("names", []), "metrics.names")
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"metrics.names: expected metric names, got {names!r}")
    options = raw.get("options", {})
    _check_keys(options, set(names), "metrics.options")
    group_by = raw.get("group_by")
    if group_by is not None and not (
        isinstance(group_by, list) and all(isinstance(g, str) for g in group_by)
    ):
        raise ConfigError(f"metrics.group_by: expected a list of field names, got {group_by!r}")
    fields = {"variant", "model", "prompt", "seed", *GENERATION_KEYS}
    unknown = sorted(set(group_by or ()) - fields)
    if unknown:
        raise ConfigError(
            f"metrics.group_by: unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(fields))}"
        )
    return MetricsConfig(names=list(names), options=dict(options), group_by=group_by)


def _resolve_params(params: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Copy ``cfg`` into ``cfg_base``/``cfg_lora`` (it stays as a label), drop what the method ignores, and
    check the combination as ``GenerationParams`` (so a bad value fails here, not after a model loaded)."""
    params = dict(params)
    if "interval" in params:
        params["interval"] = [float(v) for v in params["interval"]]
    if "cfg" in params:
        clash = [key for key in ("cfg_base", "cfg_lora") if key in params]
        if clash:
            raise ConfigError(
                f"variant {where!r}: 'cfg' sets both guidance scales and cannot be combined with {clash[0]!r}"
            )
        params["cfg_base"] = params["cfg_lora"] = params["cfg"]
    method = params.get("method", GenerationParams.method)
    # Grid points that differ only in what the method ignores are the same image.
    params = {
        key: value for key, value in params.items() if key == "cfg" or GenerationParams.used_by(key, method)
    }
    try:
        GenerationParams(**{key: value for key, value in params.items() if key != "cfg"})
    except ConfigError as error:
        raise ConfigError(f"variant {where!r}: {error}") from None
    return params


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "default"
