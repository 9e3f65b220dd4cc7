"""What a model or LoRA source names: an alias a plugin registered, a local path, or a Hub id.

Aliases: named models and LoRAs (``"world"``, ``"world:NAME"``) and the plugins that register them.

The core knows no model by name. A plugin (the miniature world, a synthesis prior, a user's own model zoo)
is a module with a ``register()`` function that calls ``register_model`` (a name for a pipeline folder, with
its calibrated CFG scale) and ``register_lora_namespace`` (``PREFIX:NAME`` resolved to a LoRA file), and may
register metrics and feature extractors (``autolora.metrics``). Plugins are the modules shipped with autolora
(``BUILTIN_PLUGINS``) and those installed under the ``autolora.plugins`` entry-point group; they are loaded
once, on the first lookup.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from autolora.errors import ConfigError

# Files a LoRA or checkpoint comes in; a source ending in one is a local file, never a Hub id.
_FILE_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin"})

#: Plugins that ship inside autolora, loaded like installed ones.
BUILTIN_PLUGINS = ("autolora.world",)
ENTRY_POINT_GROUP = "autolora.plugins"


@dataclass(frozen=True)
class ModelAlias:
    """A model name: where its pipeline folder is (found when used: assets may be built later) and its CFG."""

    path: Callable[[], Path]
    default_cfg: float | None = None


_MODELS: dict[str, ModelAlias] = {}
_LORA_NAMESPACES: dict[str, Callable[[str], Path]] = {}


def register_model(name: str, path: Callable[[], Path], *, default_cfg: float | None = None) -> None:
    """Make ``name`` a model alias for the folder ``path()`` (with its own default CFG scale, if any)."""
    if ":" in name or "/" in name:
        raise ConfigError(f"model alias {name!r} must not contain ':' or '/'")
    _MODELS[name] = ModelAlias(path, default_cfg)


def register_lora_namespace(prefix: str, resolve: Callable[[str], Path]) -> None:
    """Make ``PREFIX:NAME`` a LoRA source, ``resolve(NAME)`` its file (raising ``ConfigError`` if unknown)."""
    if not prefix.isidentifier():
        raise ConfigError(f"LoRA namespace {prefix!r} must be an identifier")
    _LORA_NAMESPACES[prefix] = resolve


@functools.cache
def load_plugins() -> tuple[str, ...]:
    """Import every plugin once and call its ``register()``; returns their names."""
    names = []
    for module_name in BUILTIN_PLUGINS:
        importlib.import_module(module_name).register()
        names.append(module_name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()()
        names.append(entry.name)
    return tuple(names)


def resolve_model(model: str) -> str:
    """The pipeline folder a model alias names, or ``model`` itself (a path or Hub id)."""
    load_plugins()
    alias = _MODELS.get(model)
    return str(alias.path()) if alias is not None else model


def resolve_lora(source: str) -> str:
    """The file a ``PREFIX:NAME`` LoRA source names, or ``source`` itself (a path or Hub id)."""
    load_plugins()
    prefix, sep, name = source.partition(":")
    if not sep or prefix not in _LORA_NAMESPACES:
        return source
    return str(_LORA_NAMESPACES[prefix](name))


def model_default_cfg(folder: str | Path) -> float | None:
    """The CFG scale registered for the model whose pipeline lives in ``folder``, or None."""
    load_plugins()
    resolved = Path(folder).resolve()
    for alias in _MODELS.values():
        if alias.default_cfg is not None and Path(alias.path()).resolve() == resolved:
            return alias.default_cfg
    return None


def is_local(source: str) -> bool:
    """Whether ``source`` is a local path (it exists, or is written as one) rather than a Hub id ``owner/name``."""
    path = Path(source).expanduser()
    return (
        path.exists()
        or path.is_absolute()
        or source.startswith((".", "~"))
        or path.suffix.lower() in _FILE_SUFFIXES
        or source.count("/") != 1
    )
