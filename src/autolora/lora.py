"""Loading LoRAs into a pipeline (checked, stackable) and writing a diffusers LoRA in kohya format."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from autolora.branches import adapter_scales
from autolora.errors import ConfigError, IncompatibleLoRAError, InputFileError
from autolora.sources import is_local, resolve_lora

# Formats that are Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})

# diffusers component prefix -> kohya key prefix.
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def load_lora(
    pipe: Any,
    source: str,
    *,
    scale: float = 1.0,
    adapter_name: str | None = None,
    weight_name: str | None = None,
    allow_pickle: bool = False,
) -> str:
    """Load a LoRA into ``pipe`` as a new active adapter at ``scale``, beside those already active.

    ``source`` is a local file or folder, a Hub id (with ``weight_name``), or an alias (``"world:<name>"``).
    diffusers/PEFT and kohya/civitai formats load through diffusers' own loaders. Returns the adapter name.
    """
    if not scale >= 0:
        raise ConfigError(f"LoRA scale must be >= 0, got {scale}")
    source = resolve_lora(source)
    loaded = {name for names in pipe.get_list_adapters().values() for name in names}
    name = adapter_name or _free_name(Path(weight_name or source).stem, loaded)
    if name in loaded:
        raise ConfigError(f"an adapter named {name!r} is already loaded; pass another adapter_name")
    active = adapter_scales(pipe)

    lora, options = _read(source, weight_name, allow_pickle)
    try:
        pipe.load_lora_weights(lora, adapter_name=name, **options)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        _forget(pipe, name)
        raise IncompatibleLoRAError(
            f"LoRA {source} does not fit {type(pipe).__name__}: {_summary(error)}"
        ) from error
    except OSError as error:
        raise InputFileError(f"cannot load LoRA {source!r}: {error}") from error
    if name not in {n for names in pipe.get_list_adapters().values() for n in names}:
        keys = sorted(lora)[:3] if isinstance(lora, dict) else []
        raise IncompatibleLoRAError(
            f"no module of {type(pipe).__name__} matches the LoRA {source} (its keys look like {keys})"
        )
    pipe.set_adapters([*active, name], adapter_weights=[*active.values(), scale])
    return name


def _free_name(stem: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", stem) or "lora"
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name


def check_lora_source(
    source: str, *, weight_name: str | None = None, allow_pickle: bool = False
) -> Path | None:
    """The local LoRA file or folder ``source`` (or the alias it is) names, checked cheaply before any
    model is loaded.

    Returns None for a Hub id (``owner/name``, downloaded by diffusers). Raises ``InputFileError`` for a
    missing local path, a pickle file without ``allow_pickle`` (loading one can run code), and a
    safetensors file whose header cannot be read; ``ConfigError`` for an unknown alias.
    """
    source = resolve_lora(source)
    path = Path(source).expanduser()
    if path.is_dir() and weight_name:
        path = path / weight_name
    if not path.exists():
        if is_local(source):
            raise InputFileError(f"LoRA {source}: no such file or folder")
        return None
    suffix = path.suffix.lower()
    if path.is_file() and suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InputFileError(
            f"LoRA {path.name} is a pickle ({suffix}), which can run code when loaded; convert it to "
            ".safetensors, or allow pickles (--allow-pickle, allow_pickle=True) if you trust its source"
        )
    if path.is_file() and suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt"):  # reads the header only
                pass
        except (SafetensorError, OSError) as error:
            raise InputFileError(f"corrupt or unreadable safetensors file {path}: {error}") from None
    return path


def _read(source: str, weight_name: str | None, allow_pickle: bool) -> tuple[Any, dict[str, Any]]:
    """A local LoRA file's state dict, or the Hub id / folder with the options diffusers needs."""
    path = check_lora_source(source, weight_name=weight_name, allow_pickle=allow_pickle)
    # Without allow_pickle, diffusers may only pick safetensors files from a folder or Hub repository.
    use_safetensors = None if allow_pickle else True
    if path is None:
        return source, {"weight_name": weight_name, "use_safetensors": use_safetensors}
    if path.is_dir():
        return str(path), {"use_safetensors": use_safetensors}
    try:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            return torch.load(path, map_location="cpu", weights_only=False), {}
        return load_file(path), {}
    except Exception as error:
        raise InputFileError(f"cannot read LoRA file {path}: {error}") from error


def _summary(error: Exception) -> str:
    """The first few mismatches of a loading error (torch lists every mismatching tensor)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines if "mismatch" in line] or lines
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return "; ".join(details[:3]) + more


def _forget(pipe: Any, name: str) -> None:
    """Remove whatever a failed load left of adapter ``name``."""
    if any(name in names for names in pipe.get_list_adapters().values()):
        pipe.delete_adapters(name)


def to_kohya_state_dict(
    state_dict: dict[str, torch.Tensor], alphas: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """A diffusers-format UNet LoRA (``unet.<module>.lora_A.weight`` ...) as kohya keys.

    kohya names a module by its diffusers path with ``_`` for ``.`` under ``lora_unet`` / ``lora_te1`` /
    ``lora_te2``, calls A/B ``lora_down``/``lora_up``, and stores ``alpha`` per module (default: the rank, so
    the scale alpha/rank is 1, as in a diffusers file without alphas). ``alphas`` maps diffusers module paths
    (``unet.<module>``) to alpha. Transformer LoRAs (SD3, Flux) use the original model's names in kohya
    files, which this renaming cannot produce, so they are refused.
    """
    kohya: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = re.fullmatch(r"(\w+?)\.(.+)\.lora_([AB])\.weight", key)
        if match is None or match[1] not in KOHYA_PREFIXES:
            raise ConfigError(
                f"cannot convert {key!r}: expected <{'|'.join(KOHYA_PREFIXES)}>.<module>.lora_A/B.weight"
            )
        component, module, side = match.groups()
        kohya_module = f"{KOHYA_PREFIXES[component]}_{module.replace('.', '_')}"
        kohya[f"{kohya_module}.lora_{'down' if side == 'A' else 'up'}.weight"] = tensor
        if side == "A":
            rank = tensor.shape[0]
            alpha = (alphas or {}).get(f"{component}.{module}", rank)
            kohya[f"{kohya_module}.alpha"] = torch.tensor(float(alpha))
    return kohya
