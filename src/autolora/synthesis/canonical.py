"""One canonical form for LoRAs of one base model, and the flat vector layout a bank stores.

Two LoRAs with the same update ``ΔW = s·B·A`` can have very different factors (any invertible ``M``
gives ``B·M``, ``M⁻¹·A``), and their ranks, alphas and file formats differ. A prior over LoRAs needs
one representative per update, so every module is *canonicalised*: ``ΔW = U·S·Vᵀ`` (SVD), kept at a
fixed rank ``R`` with the singular values shared by both factors (``B = U·√S``, ``A = √S·Vᵀ``, the
"balanced" form of ethansmith2000/AutoLoRADiscovery), the sign of each singular pair fixed so that
the largest entry of ``U``'s column is positive, and zero-padded when the LoRA's rank is below
``R``. The result always has scale 1 (``alpha = R``).

A canonical LoRA is flattened in sorted module order, A before B, each factor one *segment*.

The canonical form makes LoRAs of unrelated initialisations comparable, but only as far as their
updates are: two world LoRAs of one style trained from different initial factors have updates of
cosine 0.09, and the SVD's basis within a rank-``R`` subspace turns with small changes of the update.
LoRAs trained from one shared initialisation (``autolora world train-bank --init-seed``) differ only
by what training put into them: their *raw* factors compare directly (factors ``"raw"``, no SVD).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from autolora.errors import ConfigError, IncompatibleLoRAError, InputFileError
from autolora.lora import check_lora_source

#: A LoRA module's factors: ``(A, B)`` with ``A`` of shape (rank, in) and ``B`` of shape (out, rank).
Factors = tuple[torch.Tensor, torch.Tensor]
#: How a bank stores each module's factors: canonicalised (any LoRAs), or as trained (one shared init).
FactorForm = Literal["canonical", "raw"]
FACTOR_FORMS: tuple[str, ...] = ("canonical", "raw")


def read_lora_modules(source: str | Path) -> dict[str, Factors]:
    """The denoiser modules of a LoRA file or PEFT folder as ``{"unet.<module>": (scale·A, B)}``.

    Reads diffusers/PEFT (``unet.<module>.lora_A.weight``), older diffusers (``lora.down``),
    kohya/civitai (``lora_unet_*`` with ``alpha``) and PEFT ``save_pretrained`` folders such as
    weights2weights' (``base_model.model.<module>.lora_A.weight`` with ``adapter_config.json``).
    The LoRA scale ``alpha/rank`` is folded into ``A``, so ``B·A`` is the module's update.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    path = check_lora_source(str(source))
    if path is None:
        raise InputFileError(f"LoRA {source}: no such file or folder")
    alphas: dict[str, float] = {}
    if path.is_dir():
        state, alphas = _read_peft_folder(path)
    else:
        try:
            raw = load_file(str(path))
        except Exception as error:
            raise InputFileError(f"cannot read LoRA file {path}: {error}") from error
        state, network_alphas = StableDiffusionPipeline.lora_state_dict(raw)
        foreign = sorted({key.split(".")[0] for key in state if not key.startswith("unet.")})
        if foreign:
            raise IncompatibleLoRAError(
                f"LoRA {path.name} also adapts {', '.join(foreign)}; a LoRA bank holds denoiser (UNet) "
                "LoRAs only"
            )
        state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
        # Alphas are keyed like the LoRA's own ``down`` weights: convert them the same way.
        renamed = {
            k.removeprefix("unet.").removesuffix(".alpha"): v for k, v in (network_alphas or {}).items()
        }
        alphas = {
            key.removesuffix(".lora_A.weight"): float(value)
            for key, value in convert_unet_state_dict_to_peft(renamed).items()
        }
    modules: dict[str, Factors] = {}
    for key in sorted(state):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        down = state[key].float()
        up = state.get(f"{module}.lora_B.weight")
        if up is None or down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise InputFileError(f"LoRA {path.name}: module {module} has no matching A/B pair of matrices")
        rank = down.shape[0]
        scale = alphas.get(module, rank) / rank
        modules[f"unet.{module}"] = (down * scale, up.float())
    if not modules:
        raise InputFileError(f"LoRA {path.name} holds no UNet LoRA module (keys like {sorted(state)[:2]})")
    return modules


def _read_peft_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A PEFT ``save_pretrained`` folder: ``adapter_model.safetensors`` and ``adapter_config.json``."""
    from safetensors.torch import load_file

    weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
    if not weights.exists() or not config.exists():
        raise InputFileError(f"LoRA folder {path} needs adapter_model.safetensors and adapter_config.json")
    settings = json.loads(config.read_text())
    state = {key.removeprefix("base_model.model."): value for key, value in load_file(str(weights)).items()}
    state = {
        key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v
        for key, v in state.items()
    }
    alpha = settings.get("lora_alpha", settings.get("r", 8))
    pattern = settings.get("alpha_pattern") or {}
    alphas = {}
    for key in state:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            alphas[module] = float(next((a for p, a in pattern.items() if module.endswith(p)), alpha))
    return state, alphas


def canonicalize(down: torch.Tensor, up: torch.Tensor, rank: int) -> Factors:
    """The balanced rank-``rank`` factors ``(A, B)`` of ``ΔW = up·down`` with a fixed sign convention.

    Computed through QR of the thin factors, so the cost is that of a rank×rank SVD, in float64.
    Exact (up to rounding) when the LoRA's rank is at most ``rank``; otherwise the best rank-``rank``
    approximation (Eckart-Young).
    """
    q_up, r_up = torch.linalg.qr(up.double())
    q_down, r_down = torch.linalg.qr(down.double().T)
    u_core, s, vh_core = torch.linalg.svd(r_up @ r_down.T)
    u, v = q_up @ u_core, q_down @ vh_core.T
    # Sign convention: the entry of largest magnitude in each left singular vector is positive.
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1
    u, v = u * signs, v * signs
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    a = torch.zeros(rank, down.shape[1], dtype=torch.float64)
    b = torch.zeros(up.shape[0], rank, dtype=torch.float64)
    a[:keep] = root[:, None] * v[:, :keep].T
    b[:, :keep] = u[:, :keep] * root
    return a.float(), b.float()


@dataclass(frozen=True)
class Layout:
    """Where each module's factors sit in a flat LoRA vector, and which form they take.

    ``modules`` maps ``"unet.<module>"`` to its ``(out_features, in_features)``; segments follow in
    sorted module order, ``A`` (rank x in) then ``B`` (out x rank). ``factors`` is ``"canonical"``
    (``canonicalize``) or ``"raw"`` (each LoRA's own factors, zero-padded to ``rank``).
    """

    base: str
    rank: int
    modules: dict[str, tuple[int, int]]
    factors: FactorForm = "canonical"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"LoRA bank rank must be at least 1, got {self.rank}")
        if self.factors not in FACTOR_FORMS:
            raise ConfigError(f"factors must be one of {', '.join(FACTOR_FORMS)}, got {self.factors!r}")
        object.__setattr__(self, "modules", {k: tuple(self.modules[k]) for k in sorted(self.modules)})

    @cached_property
    def segments(self) -> list[tuple[str, tuple[int, int]]]:
        """``(name, shape)`` of each segment in order: ``<module>.lora_A.weight``, ``<module>.lora_B.weight``."""
        out = []
        for module, (fan_out, fan_in) in self.modules.items():
            out += [
                (f"{module}.lora_A.weight", (self.rank, fan_in)),
                (f"{module}.lora_B.weight", (fan_out, self.rank)),
            ]
        return out

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start of each segment in the flat vector, and the total length as the last entry."""
        return np.cumsum([0] + [math.prod(shape) for _, shape in self.segments])

    @property
    def dim(self) -> int:
        """Length of a flat LoRA vector."""
        return int(self.offsets[-1])

    def segment_ids(self) -> torch.Tensor:
        """For each entry of a flat vector, the index of its segment."""
        return torch.repeat_interleave(
            torch.arange(len(self.segments)), torch.from_numpy(np.diff(self.offsets))
        )

    def flatten(self, modules: dict[str, Factors]) -> torch.Tensor:
        """One flat vector from canonical ``{module: (A, B)}``; modules this LoRA lacks are zero."""
        unknown = sorted(set(modules) - set(self.modules))
        if unknown:
            raise IncompatibleLoRAError(f"modules {unknown[:3]} are not in the bank layout of {self.base}")
        vector = torch.zeros(self.dim)
        for index, (name, shape) in enumerate(self.segments):
            module, side = name.removesuffix(".weight").rsplit(".lora_", 1)
            if module in modules:
                tensor = modules[module][0 if side == "A" else 1]
                if tuple(tensor.shape) != shape:
                    raise IncompatibleLoRAError(f"{name} has shape {tuple(tensor.shape)}, the layout {shape}")
                vector[self.offsets[index] : self.offsets[index + 1]] = tensor.reshape(-1)
        return vector

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """A diffusers/PEFT state dict (``unet.<module>.lora_A.weight`` ...) from a flat vector."""
        if vector.shape != (self.dim,):
            raise ConfigError(
                f"a LoRA vector of this layout has shape ({self.dim},), got {tuple(vector.shape)}"
            )
        return {
            name: vector[self.offsets[i] : self.offsets[i + 1]].reshape(shape).contiguous()
            for i, (name, shape) in enumerate(self.segments)
        }

    def to_json(self) -> dict:
        return {
            "base": self.base,
            "rank": self.rank,
            "modules": {k: list(v) for k, v in self.modules.items()},
            "factors": self.factors,
        }

    @classmethod
    def from_json(cls, data: dict) -> Layout:
        modules = {k: tuple(v) for k, v in data["modules"].items()}
        return cls(data["base"], int(data["rank"]), modules, data.get("factors", "canonical"))


def lora_vector(layout: Layout, modules: dict[str, Factors], name: str = "LoRA") -> torch.Tensor:
    """The flat vector of a LoRA read by ``read_lora_modules``, its factors in the layout's form."""
    if layout.factors == "canonical":
        return layout.flatten({m: canonicalize(a, b, layout.rank) for m, (a, b) in modules.items()})
    padded = {}
    for module, (a, b) in modules.items():
        rank = a.shape[0]
        if rank > layout.rank:
            raise IncompatibleLoRAError(
                f"{name} has rank {rank} at {module}, above the bank's rank {layout.rank}; raw factors "
                "cannot be truncated (build a canonical bank, or one of a higher rank)"
            )
        padded[module] = (
            torch.nn.functional.pad(a.float(), (0, 0, 0, layout.rank - rank)),
            torch.nn.functional.pad(b.float(), (0, layout.rank - rank)),
        )
    return layout.flatten(padded)
