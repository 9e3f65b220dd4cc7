"""What the web app does, without the web page: LoRAs, comparison requests, images, metrics, tuning and
LoRAs made from reference images.

The controls are ``GenerationParams`` fields (plus the prompt and the LoRA). A request is turned into the
equivalent ``autolora generate --compare`` command line by the CLI's own field -> flag mapping, and that
command line is checked by the CLI's parser and checks, so what the app runs, the PNG metadata it writes
and the command it offers to copy are the CLI's by construction. A tune request is likewise an
``autolora tune`` command line, parsed into the ``TuneSpec`` the CLI would run. One pipeline serves every
visitor: a lock runs one request at a time, and each request activates its own LoRA at its own scale first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import tempfile
import threading
import warnings
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
from autolora.errors import ConfigError, IncompatibleLoRAError
from autolora.params import BranchMode, GenerationParams, cli_args
from autolora.tune import METHODS

if TYPE_CHECKING:
    from autolora.synthesis.prior import Prior
    from autolora.tune import TuneResult, TuneSpec
    from autolora.world.assets import LoRAInfo

#: Column titles of the side-by-side view, one per method of ``autolora generate --compare``.
METHOD_TITLES = {"base": "Base CFG", "lora": "LoRA + CFG", "autolora": "AutoLoRA"}
#: Metrics shown per column; the world's style and digit scores only where the world's evaluators apply.
METRIC_COLUMNS = {"diversity": "diversity", "style_score": "style score", "digit_score": "digit score"}


def title(method: str) -> str:
    """The column title of ``method``."""
    return METHOD_TITLES.get(method, method)


class GenerationCancelled(Exception):
    """Raised inside a running generation or tune when its visitor pressed Stop."""


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


@dataclass(frozen=True)
class TuneControls:
    """The values of the Tune tab for one search: each field is the ``autolora tune`` option of its name.

    ``trials`` is the budget in full trials (``--budget-images trials x prompts x seeds``); ``seeds`` the
    paired seeds 0..N-1; ``floor`` an absolute adherence floor, else ``floor_ratio`` of LoRA+CFG's.
    """

    lora: str
    prompts: tuple[str, ...]
    lora_scale: float = 1.0
    trials: int = 4
    seeds: int = 4
    num_inference_steps: int | None = None
    methods: tuple[str, ...] = METHODS
    diversity_metric: str = "diversity"
    adherence_metric: str = "world:style"
    adherence_column: str | None = None
    metric_options: tuple[str, ...] = ()
    floor: float | None = None
    floor_ratio: float = 0.9
    sampler_seed: int = 0


@dataclass(frozen=True)
class TuneRequest:
    """One checked search: the ``autolora tune`` command line, the spec it parses to, its study folder."""

    argv: tuple[str, ...]
    spec: TuneSpec
    out: Path
    lora: str
    lora_scale: float

    @property
    def command(self) -> str:
        """The shell command that runs (and resumes) the same search with the CLI."""
        return shlex.join(["autolora", *self.argv])


@dataclass(frozen=True)
class MadeLoRA:
    """A LoRA made from reference images: its file (loaded in the app), seconds taken, a warning or ''."""

    path: Path
    seconds: float
    warning: str


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
        prior: str | Path | None = None,
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
        # Checked priors and their condition encoders, loaded once.
        self._priors: dict[Path, Prior] = {}
        self._encoders: dict[str, Any] = {}
        #: The prior folder of ``--prior`` (checked): the Make a LoRA tab's prior until a visitor uploads one.
        self.prior = Path(prior).resolve() if prior is not None else None
        if self.prior is not None:
            self.check_prior(self.prior)

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

        self._check_loaded(controls.lora)
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

    def _check_loaded(self, lora: str | None) -> None:
        if not lora:
            raise ConfigError("no LoRA chosen: pick one, or upload a .safetensors file")
        if lora not in self.lora_choices():
            raise ConfigError(f"LoRA {lora!r} is not loaded; loaded: {', '.join(self.lora_choices())}")

    # -- Tune -----------------------------------------------------------------------------------

    def tune_request(self, controls: TuneControls) -> TuneRequest:
        """Check ``controls`` into the ``TuneSpec`` that ``autolora tune`` would run; raises naming the problem.

        The study folder is named after the search's setup without its budget, so the same search run
        again resumes (after Stop, or with more trials), as ``autolora tune`` does on the same ``--out``.
        """
        from autolora.cli import build_parser
        from autolora.cli.tune import tune_spec
        from autolora.tune import check_metrics

        if not self.is_world and controls.adherence_metric.startswith("world:"):
            raise ConfigError(
                f"{controls.adherence_metric} scores only the miniature world's images and {self.model} has no "
                "evaluator of its own: choose clip_score (CLIP from the Hub) or a judge, e.g. judge:pc_sa with "
                "its options (docs/judge.md)"
            )
        self._check_loaded(controls.lora)
        scale = GenerationParams.check_field("lora_scale", controls.lora_scale, "LoRA scale")
        trials, seeds = _whole(controls.trials, "trials"), _whole(controls.seeds, "seeds")
        if trials < 1:
            raise ConfigError(f"trials must be at least 1, got {trials}")
        argv = ["tune", "--model", self.model, "--lora", f"{controls.lora}:{scale!r}"]
        for prompt in controls.prompts:
            argv += ["--prompt", prompt]
        argv += ["--seeds", str(seeds)]
        if controls.num_inference_steps is not None:
            argv += ["--steps", str(_whole(controls.num_inference_steps, "steps"))]
        if controls.methods != METHODS:
            argv += ["--methods", ",".join(controls.methods)]
        argv += [
            "--diversity-metric",
            controls.diversity_metric,
            "--adherence-metric",
            controls.adherence_metric,
        ]
        if controls.adherence_column:
            argv += ["--adherence-column", controls.adherence_column]
        for option in controls.metric_options:
            argv += ["--metric-option", option]
        if controls.floor is not None:
            argv += ["--floor", repr(float(controls.floor))]
        elif controls.floor_ratio != 0.9:
            argv += ["--floor-ratio", repr(float(controls.floor_ratio))]
        if controls.sampler_seed:
            argv += ["--sampler-seed", str(_whole(controls.sampler_seed, "sampler seed"))]
        out = self.out / "tune" / hashlib.sha256("\0".join(argv).encode()).hexdigest()[:12]
        budget = trials * seeds * max(1, len(controls.prompts))
        argv += ["--budget-images", str(budget), "--out", str(out), "--no-progress"]
        spec = tune_spec(build_parser().parse_args(argv))
        check_metrics(spec)
        return TuneRequest(tuple(argv), spec, out, controls.lora, scale)

    def tune(
        self, request: TuneRequest, *, session: str = "", on_trial: Callable[[int, str], None] | None = None
    ) -> TuneResult:
        """Run (or resume) ``request``'s search with ``autolora.tune`` on this pipeline and LoRA.

        ``on_trial(done, line)`` follows each finished trial; Stop ends the search after the running trial
        (raising ``GenerationCancelled``), and the same request run again resumes it.
        """
        from autolora.tune import tune

        done = 0

        def log(line: str) -> None:
            nonlocal done
            done += 1
            if session in self._cancelled:
                raise GenerationCancelled(f"tune stopped after trial {done}; run it again to resume")
            if on_trial is not None:
                on_trial(done, line)

        self.add_lora(request.lora)
        with self.lock:
            self.pipe.set_adapters([self.adapters[request.lora]], [request.lora_scale])
            return tune(request.spec, request.out, progress=False, log=log, pipe=self.pipe)

    # -- Make a LoRA ----------------------------------------------------------------------------

    def check_prior(self, path: str | Path) -> Prior:
        """The prior folder ``path`` loaded, refused when it was built for another base model than this one."""
        from autolora.synthesis.bank import base_linear_shapes
        from autolora.synthesis.prior import load_prior

        path = Path(path).resolve()
        if path not in self._priors:
            prior = load_prior(path)
            shapes = base_linear_shapes(self.model)
            for module, shape in prior.layout.modules.items():
                if shapes.get(module) != tuple(shape):
                    here = "x".join(map(str, shapes[module])) if module in shapes else "absent"
                    raise IncompatibleLoRAError(
                        f"prior {path} is for base model {prior.layout.base}, not this app's model {self.model}:"
                        f" its module {module} is {shape[0]}x{shape[1]} there, {here} here"
                    )
            self._priors[path] = prior
        return self._priors[path]

    def make_lora(
        self,
        prior_path: str | Path,
        images: Sequence[str | Path],
        *,
        seed: int = 0,
        guidance: float = 1.0,
        fit_steps: int = 200,
        name: str = "",
    ) -> MadeLoRA:
        """A LoRA from reference ``images`` with ``autolora.synthesis.synthesize``, loaded and offered here.

        A PCA prior inverts the images on this pipeline in ``fit_steps`` steps (empty captions), as
        ``autolora synth --base`` does. The file is named after ``name`` and a hash of its inputs.
        """
        import re

        from autolora.synthesis.conditions import load_encoder
        from autolora.synthesis.synth import FarConditionWarning, synthesize

        if not images:
            raise ConfigError("no reference images: upload a few images of the style or subject")
        prior = self.check_prior(prior_path)
        seed, fit_steps = _whole(seed, "seed"), _whole(fit_steps, "inversion steps")
        if fit_steps < 1:
            raise ConfigError(f"inversion steps must be at least 1, got {fit_steps}")
        settings = (Path(prior_path).resolve(), seed, guidance, fit_steps if not prior.conditional else None)
        digest = hashlib.sha256("\0".join(map(repr, settings)).encode())
        for image in images:
            digest.update(Path(image).read_bytes())
        stem = re.sub(r"[^\w-]", "_", name.strip()) or "made"
        path = self.out / "made" / f"{stem}-{digest.hexdigest()[:8]}.safetensors"
        encoder = None
        if prior.conditional:
            if prior.encoder not in self._encoders:
                self._encoders[prior.encoder] = load_encoder(prior.encoder)
            encoder = self._encoders[prior.encoder]
        with self.lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FarConditionWarning)
            result = synthesize(
                prior,
                images,
                path,
                seed=seed,
                guidance=guidance,
                encoder=encoder,
                pipe=self.pipe,
                fit_steps=fit_steps,
            )
        self.add_lora(str(path))
        far = [str(w.message) for w in caught if issubclass(w.category, FarConditionWarning)]
        return MadeLoRA(path, result.seconds, far[0] if far else "")

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
