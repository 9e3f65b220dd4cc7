"""What the web app does, without the web page: LoRAs, one comparison request, images, metrics.

The controls are ``GenerationParams`` fields (plus the prompt and the LoRA). A request is turned into the
equivalent ``autolora generate --compare`` command line by the CLI's own field -> flag mapping, and that
command line is checked by the CLI's parser and checks, so what the app runs, the PNG metadata it writes
and the command it offers to copy are the CLI's by construction. One pipeline serves every visitor: a lock
runs one request at a time, and each request activates its own LoRA at its own scale before it generates.
"""

from __future__ import annotations

import dataclasses
import shlex
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from autolora.cli.generate import (
    GenerateOptions,
    check_args,
    image_params,
    pipeline_info,
    resolved_params,
)
from autolora.errors import ConfigError
from autolora.params import BranchMode, GenerationParams, cli_args

if TYPE_CHECKING:
    from autolora.world.assets import LoRAInfo

#: Column titles of the side-by-side view, one per method of ``autolora generate --compare``.
METHOD_TITLES = {"base": "Base CFG", "lora": "LoRA + CFG", "autolora": "AutoLoRA"}
#: Metrics shown per column; the world's style and digit scores only where the world's evaluators apply.
METRIC_COLUMNS = {"diversity": "diversity", "style_score": "style score", "digit_score": "digit score"}


def title(method: str) -> str:
    """The column title of ``method``."""
    return METHOD_TITLES.get(method, method)


class GenerationCancelled(Exception):
    """Raised inside a running generation when its visitor pressed Stop."""


@dataclass(frozen=True)
class Controls:
    """The values of the app's controls for one request: the prompt, the LoRA, and GenerationParams fields.

    Every field after ``lora_scale`` is the ``GenerationParams`` field of the same name; the defaults are
    the page's (4 images of 20 steps), the others those of ``GenerationParams``.
    """

    prompt: str
    lora: str
    lora_scale: float = 1.0
    negative_prompt: str = ""
    gamma: float = 1.5
    gamma_end: float | None = None
    cfg_base: float | None = None
    cfg_lora: float | None = None
    interval: tuple[float, float] = (0.0, 1.0)
    num_inference_steps: int = 20
    seed: int = 0
    num_images: int = 4
    branch_mode: BranchMode = "batched"
    cache_interval: int = 1
    cache_threshold: float | None = None
    cfg_interval: tuple[float, float] | None = None
    cads_noise: float | None = None
    cads_tau: tuple[float, float] = (0.6, 0.9)
    cads_psi: float = 1.0

    def params(self) -> GenerationParams:
        """The GenerationParams of these controls; raises ConfigError naming a bad one."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["prompt"], values["lora"], values["lora_scale"]
        # Sliders and number boxes hand whole numbers over as floats (20.0); the fields take integers.
        for name in ("num_inference_steps", "seed", "num_images", "cache_interval"):
            values[name] = _whole(values[name], name)
        values["negative_prompt"] = values["negative_prompt"] or None
        return GenerationParams(**values)


@dataclass(frozen=True)
class Request:
    """One checked request: the ``autolora generate`` command line and the options it parses to."""

    argv: tuple[str, ...]
    options: GenerateOptions
    lora: str

    @property
    def command(self) -> str:
        """The shell command that makes the same images with the CLI."""
        return shlex.join(["autolora", *self.argv])


class Engine:
    """The pipeline behind the app, its loaded LoRAs, and the requests run on it (one at a time)."""

    def __init__(
        self,
        pipe: Any,
        *,
        model: str,
        out: Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
        features: str | None = None,
    ) -> None:
        from autolora.pipelines import default_cfg_scale

        self.pipe, self.model = pipe, model
        self.out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="autolora-app-"))
        self.device, self.dtype, self.allow_pickle = device, dtype, allow_pickle
        self.is_world = model == "world"
        self.features = features or ("world" if self.is_world else "dinov2")
        self.default_cfg = default_cfg_scale(pipe)
        self.lock = threading.Lock()
        # LoRA source (world:NAME or a file path) -> adapter name in ``pipe``.
        self.adapters: dict[str, str] = {}
        # LoRA source -> the scale proposed for it (``--lora FILE:SCALE``).
        self.scales: dict[str, float] = {}
        self._cancelled: set[str] = set()

    # -- LoRAs ----------------------------------------------------------------------------------

    def lora_choices(self) -> list[str]:
        """The LoRAs a visitor can pick: the world's by name (on the world), then every loaded file."""
        choices = []
        if self.is_world:
            from autolora.world.assets import available_loras

            choices = [f"world:{name}" for name in available_loras()]
        return choices + [source for source in self.adapters if source not in choices]

    def default_lora(self) -> str | None:
        """The LoRA the page starts with: the first ``--lora``, else the demo's world LoRA."""
        from autolora.cli.demo import DEFAULT_LORA

        if self.adapters:
            return next(iter(self.adapters))
        return f"world:{DEFAULT_LORA}" if self.is_world else None

    def default_prompt(self) -> str:
        """A prompt that exercises the default LoRA: its own on the world, else none."""
        info = self._world_info(self.default_lora() or "")
        return info.prompt if info is not None else ""

    def add_lora(self, source: str, *, scale: float = 1.0) -> str:
        """Load the LoRA ``source`` (checked by ``load_lora``) unless it is loaded; returns its source.

        ``scale`` is the scale the page proposes for it (a request sets its own).
        """
        from autolora.lora import load_lora

        with self.lock:
            if source not in self.adapters:
                # Loading also activates the adapter; harmless, as every request activates its own first.
                self.adapters[source] = load_lora(self.pipe, source, allow_pickle=self.allow_pickle)
        self.scales[source] = scale
        return source

    # -- Requests -------------------------------------------------------------------------------

    def command_line(self, controls: Controls) -> list[str]:
        """The ``autolora generate`` arguments that make the same images as ``controls`` on this engine."""
        scale = GenerationParams.check_field("lora_scale", controls.lora_scale, "LoRA scale")
        argv = ["generate", "--model", self.model, "--lora", f"{controls.lora}:{scale!r}"]
        argv += ["--prompt", controls.prompt, *cli_args(controls.params())]
        if self.device:
            argv += ["--device", self.device]
        if self.dtype:
            argv += ["--dtype", self.dtype]
        if self.allow_pickle:
            argv += ["--allow-pickle"]
        return [*argv, "--out", str(self.out), "--compare"]

    def request(self, controls: Controls) -> Request:
        """Check ``controls`` with the CLI's own checks; raises ConfigError / InputFileError naming the problem."""
        from autolora.cli import build_parser

        if not controls.lora:
            raise ConfigError("no LoRA chosen: pick one, or upload a .safetensors file")
        if controls.lora not in self.lora_choices():
            raise ConfigError(
                f"LoRA {controls.lora!r} is not loaded; loaded: {', '.join(self.lora_choices())}"
            )
        argv = self.command_line(controls)
        options = check_args(build_parser().parse_args(argv))
        return Request(argv=tuple(argv), options=options, lora=controls.lora)

    def cancel(self, session: str) -> None:
        """Stop the generation running for ``session`` at its next denoising step."""
        self._cancelled.add(session)

    def clear_cancel(self, session: str) -> None:
        """Forget an earlier Stop of ``session`` (a new request starts)."""
        self._cancelled.discard(session)

    def render(
        self,
        request: Request,
        method: str,
        *,
        session: str = "",
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Path]:
        """Generate ``request``'s images with ``method`` and write them as PNGs with the CLI's metadata."""
        from autolora.images import save_png
        from autolora.pipelines import generate

        options = request.options
        # The defaults the pipeline resolves, written out as ``autolora generate`` records them.
        params = resolved_params(self.pipe, replace(options.params, method=method))

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if session in self._cancelled:
                raise GenerationCancelled(f"{title(method)} stopped at step {step + 1}")
            if on_step is not None:
                on_step(step + 1, len(pipe.scheduler.timesteps))
            return tensors

        self.add_lora(request.lora)
        with self.lock:
            # This request's adapter at this request's scale, whatever the previous request used.
            self.pipe.set_adapters([self.adapters[request.lora]], [options.loras[0].scale])
            images = generate(
                self.pipe, options.prompt, params, progress=False, callback_on_step_end=step_end
            )
        folder = self.out / _request_folder(request)
        info, paths = pipeline_info(self.pipe), []
        for i, image in enumerate(images):
            seed = params.seed + i
            record = image_params(options, replace(params, seed=seed), image.size, info)
            paths.append(save_png(image, folder / f"{method}-seed{seed}.png", record))
        return paths

    # -- Metrics --------------------------------------------------------------------------------

    def measure(self, request: Request, images: dict[str, Sequence[Image.Image]]) -> pd.DataFrame:
        """One row per column: diversity (Eq. 8), and on the world the style and prompted-digit scores."""
        from autolora.metrics import evaluate
        from autolora.metrics.registry import ImageRecord

        options = request.options
        info = self._world_info(request.lora)
        style = info.style if info is not None else None
        # A character LoRA shows its own digit; otherwise the prompt names the digit (world:digit reads it).
        meta = {"prompt": options.prompt, "style": style, "digit": info.digit if info is not None else None}
        records = [
            ImageRecord(image, meta={**meta, "method": title(method)})
            for method, column in images.items()
            for image in column
        ]
        metrics = ["diversity"]
        if self.is_world:
            metrics += ["world:digit"] + (["world:style"] if style is not None else [])
        result = evaluate(
            records, metrics, group_by=("method",), options={"diversity": {"extractor": self.features}}
        )
        table = result.per_group.set_index("method").reindex([title(m) for m in images])
        table = table.reindex(columns=[c for c in METRIC_COLUMNS if c in table.columns])
        return table.rename(columns=METRIC_COLUMNS).round(3).reset_index()

    def _world_info(self, lora: str) -> LoRAInfo | None:
        """What a world LoRA renders (its style, its character's digit, a prompt); None for other LoRAs."""
        if not (self.is_world and lora.startswith("world:")):
            return None
        from autolora.world.assets import lora_info

        return lora_info(lora.removeprefix("world:"))


def _whole(value: Any, name: str) -> int:
    """``value`` as an int when it is a whole number (``20.0`` from a slider), else a ConfigError naming ``name``."""
    if not (isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _request_folder(request: Request) -> str:
    """A folder per request, so images of two requests never overwrite each other."""
    import hashlib

    return hashlib.sha256("\0".join(request.argv).encode()).hexdigest()[:12]
