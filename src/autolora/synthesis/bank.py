"""A bank of LoRAs of one base model, stored memory-mapped so it streams from disk.

A bank folder holds ``weights.npy`` (N x D float32, each LoRA's flat vector in the layout's factor
form, canonical or raw, read through
``numpy.memmap``), ``bank.json`` (the layout, per-segment standard deviations, the LoRA names and
build progress) and, when built with a condition encoder, ``conditions.npy`` (N x C). Priors see
*normalised* vectors: each segment divided by its standard deviation over the bank, as in
SonicCodes/AutoLoRADiscovery, so small and large layers weigh alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autolora.errors import ConfigError, IncompatibleLoRAError, InputFileError
from autolora.images import atomic_write_bytes
from autolora.synthesis.canonical import FactorForm, Layout, lora_vector, read_lora_modules

LORA_SUFFIXES = (".safetensors",)
#: Rows written between two progress records while building (a resumed build redoes at most these).
CHUNK = 64


def resolve_base(base: str) -> str:
    """A pipeline folder or Hub id; a model alias (``"world"``) is the folder it names."""
    from autolora.sources import resolve_model

    return resolve_model(base)


def base_linear_shapes(base: str) -> dict[str, tuple[int, int]]:
    """``{"unet.<module>": (out, in)}`` of every linear layer of ``base``'s UNet, from its config alone.

    The UNet is built on the meta device (accelerate's ``init_empty_weights``), so no weight is read.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    try:
        config = UNet2DConditionModel.load_config(resolve_base(base), subfolder="unet")
    except (OSError, ValueError) as error:
        raise InputFileError(f"cannot read the UNet config of base model {base}: {error}") from None
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return {
        f"unet.{name}": (module.out_features, module.in_features)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def check_fits_base(
    name: str, shapes: dict[str, tuple[int, int]], base_shapes: dict[str, tuple[int, int]], base: str
) -> None:
    """Raise ``IncompatibleLoRAError`` naming the first module of a LoRA that ``base`` lacks or shapes otherwise."""
    for module, shape in shapes.items():
        if module not in base_shapes:
            raise IncompatibleLoRAError(
                f"LoRA {name} is not for base model {base}: its module {module} does not exist there"
            )
        if shape != base_shapes[module]:
            raise IncompatibleLoRAError(
                f"LoRA {name} is not for base model {base}: module {module} is {shape[0]}x{shape[1]} "
                f"(out x in) in the LoRA, {base_shapes[module][0]}x{base_shapes[module][1]} in the base"
            )


@dataclass
class Bank:
    """An opened bank: its layout, per-segment standard deviations and memory-mapped rows."""

    path: Path
    layout: Layout
    names: list[str]
    stds: torch.Tensor
    weights: np.memmap
    conditions: torch.Tensor | None
    encoder: str | None

    @classmethod
    def open(cls, path: str | Path) -> Bank:
        """Open the bank folder ``path`` without reading its rows."""
        path = Path(path)
        meta_file = path / "bank.json"
        if not meta_file.exists():
            raise InputFileError(
                f"{path} is not a LoRA bank (no bank.json); build one with `autolora bank build`"
            )
        meta = json.loads(meta_file.read_text())
        if meta.get("done", 0) != len(meta["names"]) or meta.get("stds") is None:
            raise InputFileError(f"LoRA bank {path} is incomplete; rerun `autolora bank build` to finish it")
        weights = np.load(path / "weights.npy", mmap_mode="r")
        conditions = torch.from_numpy(np.load(path / "conditions.npy")) if meta.get("encoder") else None
        return cls(
            path,
            Layout.from_json(meta["layout"]),
            meta["names"],
            torch.tensor(meta["stds"]),
            weights,
            conditions,
            meta.get("encoder"),
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def scale(self) -> torch.Tensor:
        """The per-entry standard deviation (each segment's std repeated over its entries)."""
        return self.stds[self.layout.segment_ids()]

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Unnormalised LoRA vectors -> the normalised space priors work in."""
        return raw / self.scale

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """Normalised vectors -> unnormalised LoRA vectors (what ``Layout.unflatten`` takes)."""
        return normalized * self.scale

    def rows(self, index: Sequence[int] | slice, *, normalized: bool = True) -> torch.Tensor:
        """Rows ``index`` read from disk, normalised unless ``normalized=False``."""
        raw = torch.from_numpy(np.array(self.weights[index], dtype=np.float32))
        return self.normalize(raw) if normalized else raw

    def batches(self, batch_size: int = 1024, *, normalized: bool = True) -> Iterator[torch.Tensor]:
        """The whole bank in consecutive row blocks, read one block at a time."""
        for start in range(0, len(self), batch_size):
            yield self.rows(slice(start, start + batch_size), normalized=normalized)


def build_bank(
    lora_dir: str | Path,
    base: str,
    rank: int,
    out: str | Path,
    *,
    encoder: str | None = None,
    references: Callable[[Path], Sequence[Image.Image | Path]] | None = None,
    exclude: Collection[str] = (),
    factors: FactorForm = "canonical",
    log: Callable[[str], None] = lambda _: None,
) -> Bank:
    """Every LoRA under ``lora_dir`` as a row of a bank at ``out`` (resumable), its factors
    canonicalised or, with ``factors="raw"``, as trained (for LoRAs of one shared initialisation).

    Every file is checked against ``base`` first (modules and shapes, from its config), so a LoRA of
    another base model is refused before any work. With ``encoder`` (a condition encoder spec, see
    ``autolora.synthesis.conditions``), each LoRA's reference images are encoded into its condition:
    ``references(lora_path)`` when given (for LoRAs without images on disk, such as the miniature
    world's, whose renders come from the style name), else the images in the folder ``<lora stem>/``
    beside it. LoRAs whose name (file stem) is in ``exclude`` are left out (held-out styles).
    """
    lora_dir, out = Path(lora_dir), Path(out)
    sources = [s for s in _lora_sources(lora_dir) if _lora_name(s) not in set(exclude)]
    if not sources:
        raise InputFileError(f"every LoRA in {lora_dir} is excluded; the bank would be empty")
    # 1. Check every LoRA against the base model (headers and factor shapes only).
    base_shapes = base_linear_shapes(base)
    used: dict[str, tuple[int, int]] = {}
    for source in sources:
        shapes = {m: (b.shape[0], a.shape[1]) for m, (a, b) in read_lora_modules(source).items()}
        check_fits_base(source.name, shapes, base_shapes, base)
        used.update(shapes)
    layout = Layout(base, rank, used, factors)
    image_sets = None
    if encoder:
        image_sets = [list(references(s)) for s in sources] if references else _image_sets(sources)
    # 2. Flat vectors into the memory-mapped matrix, resuming after the last recorded chunk.
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "layout": layout.to_json(),
        "names": [s.name for s in sources],
        "encoder": encoder,
        "done": 0,
        "stds": None,
    }
    meta_file = out / "bank.json"
    if meta_file.exists():
        previous = json.loads(meta_file.read_text())
        if {k: previous.get(k) for k in ("layout", "names", "encoder")} != {
            k: meta[k] for k in ("layout", "names", "encoder")
        }:
            raise ConfigError(f"{out} holds a different bank; choose another --out or delete it")
        meta["done"] = previous["done"]
    shape = (len(sources), layout.dim)
    weights_file = out / "weights.npy"
    if meta["done"] and weights_file.exists():
        weights = np.load(weights_file, mmap_mode="r+")
    else:
        weights = np.lib.format.open_memmap(weights_file, mode="w+", dtype=np.float32, shape=shape)
    for index in range(meta["done"], len(sources)):
        source = sources[index]
        weights[index] = lora_vector(layout, read_lora_modules(source), source.name).numpy()
        if (index + 1) % CHUNK == 0 or index + 1 == len(sources):
            weights.flush()
            meta["done"] = index + 1
            atomic_write_bytes(meta_file, json.dumps(meta).encode())
            log(f"read {index + 1}/{len(sources)} LoRAs")
    # 3. Per-segment standard deviations, streamed over the rows (zero segments keep std 1).
    meta["stds"] = _segment_stds(weights, layout).tolist()
    if image_sets is not None:
        from autolora.synthesis.conditions import condition_of, load_encoder

        model = load_encoder(encoder)
        np.save(out / "conditions.npy", torch.stack([condition_of(model, s) for s in image_sets]).numpy())
    del weights
    atomic_write_bytes(meta_file, json.dumps(meta).encode())
    return Bank.open(out)


def _lora_sources(lora_dir: Path) -> list[Path]:
    if not lora_dir.is_dir():
        raise InputFileError(f"LoRA folder {lora_dir} does not exist")
    sources = sorted(
        p
        for p in lora_dir.iterdir()
        if (p.is_file() and p.suffix in LORA_SUFFIXES) or (p / "adapter_config.json").exists()
    )
    if not sources:
        raise InputFileError(f"{lora_dir} holds no .safetensors LoRA and no PEFT adapter folder")
    return sources


def _lora_name(source: Path) -> str:
    """A LoRA's name: its file stem, or its PEFT folder's name."""
    return source.stem if source.is_file() else source.name


def _image_sets(sources: list[Path]) -> list[list[Path]]:
    """The reference images of each LoRA (``<stem>/*.png|jpg|webp``); every LoRA needs some."""
    from autolora.images import IMAGE_SUFFIXES

    sets = []
    for source in sources:
        folder = source.parent / (source.stem if source.is_file() else f"{source.name}.images")
        images = (
            sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        if not images:
            raise InputFileError(
                f"LoRA {source.name} has no reference images in {folder}/ to encode its condition"
            )
        sets.append(images)
    return sets


def _segment_stds(weights: np.ndarray, layout: Layout, batch_size: int = 1024) -> np.ndarray:
    """Each segment's standard deviation over all its entries in all rows, in one streaming pass."""
    sums = np.zeros(len(layout.segments))
    squares = np.zeros(len(layout.segments))
    for start in range(0, len(weights), batch_size):
        block = np.asarray(weights[start : start + batch_size], dtype=np.float64)
        sums += np.add.reduceat(block, layout.offsets[:-1], axis=1).sum(0)
        squares += np.add.reduceat(block**2, layout.offsets[:-1], axis=1).sum(0)
    count = np.diff(layout.offsets) * len(weights)
    variance = np.maximum(squares / count - (sums / count) ** 2, 0.0)
    stds = np.sqrt(variance)
    return np.where(stds > 0, stds, 1.0).astype(np.float32)
