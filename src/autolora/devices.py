"""Where and in which precision models run: the default device and the weight dtypes by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from autolora.errors import ConfigError

if TYPE_CHECKING:
    import torch

TorchDType = Literal["float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(TorchDType)


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype called ``name`` (one of ``DTYPES``); None stays None (the model's own dtype)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    import torch

    return getattr(torch, name)
