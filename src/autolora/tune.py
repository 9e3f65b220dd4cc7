"""``autolora tune``: the guidance setting that gives the most varied images at the adherence a user wants.

Every trial is one setting (a method and its parameters) run on the user's own model, LoRAs and prompts,
always from the same seeds (paired noise), and scored on two objectives, both maximised:

* diversity: a group-level metric (Eq. 8 by default) per prompt, averaged over prompts;
* adherence: an image-level score (the world's style score offline, CLIP score or a judge's score on real
  models), averaged over images.

Optuna's multi-objective TPE sampler proposes the settings: it is sample-efficient at budgets of tens
of trials, where NSGA-II needs generations of ~50; the adherence floor is its constraint. The study
lives in an SQLite file (``OUT/study.db``), so a re-run resumes it and the budget (images or minutes)
counts every run. A trial first makes half its seeds and stops there when even the upper end of its
adherence interval is below the floor (a hopeless setting). The first trial is what users do today,
LoRA+CFG at the model's default scale; with no absolute floor, the floor is a fraction of its adherence.

Outputs in ``OUT``: ``front.csv`` and ``front.md`` (every finished trial, the Pareto front marked),
``pareto-*.png`` (the front, every point labelled), ``tuned.toml`` (the recommended setting as a sweep
file that ``autolora sweep`` runs and ``autolora generate --preset`` reads) and ``trials/`` (the images).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from autolora.errors import ConfigError
from autolora.experiments.config import LoRASpec

#: The methods ``tune`` searches, each a function of the trial (see ``_suggest``).
METHODS = ("lora", "autolora", "interval-cfg", "cads")
STUDY_FILE = "study.db"
PRESET_FILE = "tuned.toml"
# Ranges of the search, relative to the model's default CFG scale w (SDXL 5, the world 4).
# x w, for LoRA+CFG, both AutoLoRA branches and CADS (never below 1): the world's trade-off map has
# LoRA+CFG at half the default scale on its front, so the search goes below the default too.
_CFG_RANGE = (0.25, 2.5)
_INTERVAL_CFG_RANGE = (1.0, 4.0)  # x w: guidance on part of the trajectory is usually stronger
_LORA_SCALE_RANGE = (0.25, 1.25)
_GAMMA_RANGE = (0.0, 3.0)
_SIGMA_RANGE = (0.05, 20.0)  # noise levels of the CFG interval, log-uniform
_CADS_NOISE_RANGE = (0.0, 0.5)
# A trial is stopped early only on at least this many images.
_MIN_IMAGES_TO_PRUNE = 4
# Each trial's settings are rounded to this many significant digits: what a person would type.
_DIGITS = 3


@dataclass(frozen=True)
class TuneSpec:
    """What to tune on and how: the user's setup, the objectives, the floor and the budget."""

    model: str
    loras: tuple[LoRASpec, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...] = METHODS
    diversity_metric: str = "diversity"
    adherence_metric: str = "world:style"
    adherence_column: str = "style_score"
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    floor: float | None = None
    floor_ratio: float = 0.9
    budget_images: int | None = None
    budget_minutes: float | None = None
    num_inference_steps: int | None = None
    sampler_seed: int = 0

    def __post_init__(self) -> None:
        if not self.loras:
            raise ConfigError("tune needs at least one LoRA")
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise ConfigError("tune needs at least one non-empty prompt")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(
                f"tune needs at least two distinct seeds (diversity compares images), got {self.seeds}"
            )
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ConfigError(
                f"unknown tune method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}"
            )
        if "lora" not in self.methods:
            # LoRA+CFG at the default scale is the first trial: the reference of the floor and the answer.
            object.__setattr__(self, "methods", ("lora", *self.methods))
        if self.budget_images is None and self.budget_minutes is None:
            raise ConfigError("give a budget: --budget-images N and/or --budget-minutes M")
        if self.budget_images is not None and self.budget_images < self.images_per_trial:
            raise ConfigError(
                f"--budget-images {self.budget_images} is less than one trial ({self.images_per_trial} images:"
                f" {len(self.prompts)} prompt(s) x {len(self.seeds)} seeds)"
            )
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        if not 0 < self.floor_ratio <= 1:
            raise ConfigError(f"--floor-ratio must be in (0, 1], got {self.floor_ratio}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.num_inference_steps}")

    @property
    def images_per_trial(self) -> int:
        """Images one full trial makes: every prompt with every seed."""
        return len(self.prompts) * len(self.seeds)


@dataclass
class TuneResult:
    """What ``tune`` found: every finished trial, the recommended one, the files written."""

    trials: pd.DataFrame
    recommended: dict[str, Any] | None
    floor: float | None
    files: list[Path]


def check_metrics(spec: TuneSpec) -> None:
    """Fail before anything loads when a metric is unknown or has the wrong level."""
    # The registry loads the plugins (the world's metrics among them) on the first lookup.
    from autolora.metrics import registry

    for name, level in ((spec.diversity_metric, "group"), (spec.adherence_metric, "image")):
        metric = registry.get_metric(name, **spec.metric_options.get(name, {}))
        if metric.level != level:
            raise ConfigError(f"metric {name!r} is {metric.level}-level; tune needs a {level}-level one here")


def tune(
    spec: TuneSpec,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    pipe: Any = None,
) -> TuneResult:
    """Run (or resume) the search of ``spec`` in ``out`` until its budget is spent; write front, plot, preset.

    ``log`` gets one line per finished trial (an exception it raises stops the search there; the study
    keeps the trials so far). ``pipe`` is ``spec.model`` already loaded with ``spec.loras`` active at
    their scales (a running app's); without it the model and LoRAs are loaded here.
    """
    import optuna

    check_metrics(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    # 1. Open the study (resuming it) and fail trials a killed run left running: they are run again.
    study = optuna.create_study(
        study_name="tune",
        storage=f"sqlite:///{(out / STUDY_FILE).resolve()}",
        directions=["maximize", "maximize"],
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        # ``group`` (TPE over each method's own parameters) is marked experimental by Optuna.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A resumed run seeds its sampler past the trials so far, so it does not repeat their proposals.
        study.sampler = optuna.samplers.TPESampler(
            seed=spec.sampler_seed + len(study.trials), multivariate=True, group=True, n_startup_trials=4
        )
    _check_same_setup(study, spec)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)

    # 2. Load the model once; the first trial is LoRA+CFG at the default scale (the reference).
    runner = _TrialRunner(spec, out, pipe)
    if not study.trials:
        study.enqueue_trial(_reference_params(runner.default_cfg))
        for params in _map_starts(spec.methods, runner.default_cfg):
            study.enqueue_trial(params)

    # 3. Trials until the budget is spent.
    from tqdm.auto import tqdm

    used_images, used_seconds = _spent(study)
    total = spec.budget_images or math.inf
    finished: list[Any] = []  # the trial just run; queued ones may come after it in study.trials
    with tqdm(
        total=spec.budget_images, initial=used_images, unit="img", disable=not progress, desc="tune"
    ) as bar:
        while used_images + spec.images_per_trial <= total and (
            spec.budget_minutes is None or used_seconds < spec.budget_minutes * 60
        ):
            finished.clear()
            study.optimize(
                lambda trial: runner.objective(trial, study),
                n_trials=1,
                catch=(),
                callbacks=[lambda _, trial: finished.append(trial)],
            )
            last = finished[0]
            used_images, used_seconds = _spent(study)
            bar.update(last.user_attrs.get("images", 0))
            log(_trial_line(last))

    # 4. The front, the recommendation and its preset.
    return _write_results(study, spec, out)


def _check_same_setup(study: Any, spec: TuneSpec) -> None:
    """A resumed study must measure the same thing: same model, LoRAs, prompts, seeds and metrics."""
    setup = json.dumps(_setup(spec), sort_keys=True)
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
    elif stored != setup:
        raise ConfigError(
            "this --out folder holds a study of another setup (model, LoRAs, prompts, seeds, metrics or floor);"
            " use a new --out folder"
        )


def _setup(spec: TuneSpec) -> dict[str, Any]:
    return {
        "model": spec.model,
        "loras": [vars(lora) for lora in spec.loras],
        "prompts": list(spec.prompts),
        "seeds": list(spec.seeds),
        "steps": spec.num_inference_steps,
        "metrics": [spec.diversity_metric, spec.adherence_metric, spec.adherence_column, spec.metric_options],
        "floor": [spec.floor, spec.floor_ratio],
        "methods": list(spec.methods),
    }


def _spent(study: Any) -> tuple[int, float]:
    """Images made and seconds spent by every trial of the study so far, across runs."""
    trials = study.get_trials(deepcopy=False)
    return (
        sum(t.user_attrs.get("images", 0) for t in trials),
        sum(t.user_attrs.get("seconds", 0.0) for t in trials),
    )


# --- The search space ---------------------------------------------------------------------------


def _reference_params(w: float) -> dict[str, Any]:
    return {"method": "lora", "lora/cfg_lora": w, "lora/lora_scale": 1.0}


#: Settings on the front of the miniature world's trade-off map (docs/tradeoffs.md; CFG scales as a
#: multiple of the default), tried right after the reference.
_MAP_STARTS = (
    ("interval-cfg", {"cfg_lora": 1.0, "sigma_a": 0.28, "sigma_b": 5.42, "lora_scale": 1.0}),
    ("cads", {"cfg_lora": 1.0, "cads_noise": 0.25, "tau1": 0.6, "tau_width": 0.3, "lora_scale": 1.0}),
    ("lora", {"cfg_lora": 0.5, "lora_scale": 0.75}),
)


def _map_starts(methods: Sequence[str], w: float) -> list[dict[str, Any]]:
    """The ``_MAP_STARTS`` of the searched ``methods`` as trial parameters, CFG scales times ``w``."""
    starts = []
    for method, values in _MAP_STARTS:
        if method in methods:
            cfg_range = _scaled(_INTERVAL_CFG_RANGE if method == "interval-cfg" else _CFG_RANGE, w)
            values = {**values, "cfg_lora": min(max(values["cfg_lora"] * w, cfg_range[0]), cfg_range[1])}
            starts.append({"method": method, **{f"{method}/{name}": v for name, v in values.items()}})
    return starts


def _suggest(trial: Any, methods: Sequence[str], w: float) -> dict[str, Any]:
    """The trial's ``generate`` keyword arguments; parameter names carry their method (a conditional space)."""
    method = trial.suggest_categorical("method", list(methods))

    def number(name: str, low: float, high: float, log: bool = False) -> float:
        return _round(trial.suggest_float(f"{method}/{name}", low, high, log=log))

    lora_scale = number("lora_scale", *_LORA_SCALE_RANGE)
    if method == "lora":
        return {
            "method": "lora",
            "cfg_lora": number("cfg_lora", *_scaled(_CFG_RANGE, w)),
            "lora_scale": lora_scale,
        }
    if method == "autolora":
        return {
            "method": "autolora",
            "gamma": number("gamma", *_GAMMA_RANGE),
            "cfg_base": number("cfg_base", *_scaled(_CFG_RANGE, w)),
            "cfg_lora": number("cfg_lora", *_scaled(_CFG_RANGE, w)),
            "lora_scale": lora_scale,
        }
    if method == "interval-cfg":
        sigmas = sorted(
            (number("sigma_a", *_SIGMA_RANGE, log=True), number("sigma_b", *_SIGMA_RANGE, log=True))
        )
        return {
            "method": "lora",
            "cfg_lora": number("cfg_lora", *_scaled(_INTERVAL_CFG_RANGE, w)),
            "cfg_interval": tuple(sigmas),
            "lora_scale": lora_scale,
        }
    tau1 = number("tau1", 0.2, 0.9)
    return {
        "method": "lora",
        "cfg_lora": number("cfg_lora", *_scaled(_CFG_RANGE, w)),
        "cads_noise": number("cads_noise", *_CADS_NOISE_RANGE),
        "cads_tau": (tau1, _round(min(1.0, tau1 + number("tau_width", 0.0, 0.4)))),
        "lora_scale": lora_scale,
    }


def _scaled(bounds: tuple[float, float], w: float) -> tuple[float, float]:
    return max(1.0, bounds[0] * w), bounds[1] * w


def _round(value: float) -> float:
    return float(f"{value:.{_DIGITS}g}")


# --- Running a trial ----------------------------------------------------------------------------


class _TrialRunner:
    """The loaded pipeline and evaluation settings; ``objective`` runs one trial."""

    def __init__(self, spec: TuneSpec, out: Path, pipe: Any = None) -> None:
        import autolora

        self.spec, self.out, self.pipe = spec, out, pipe
        if pipe is None:
            self.pipe = autolora.load_pipeline(spec.model)
            for lora in spec.loras:
                autolora.load_lora(
                    self.pipe,
                    lora.source,
                    scale=lora.scale,
                    adapter_name=lora.adapter_name,
                    weight_name=lora.weight_name,
                )
            self.pipe.set_progress_bar_config(disable=True)
        self.default_cfg = autolora.default_cfg_scale(self.pipe)
        half = max(2, len(spec.seeds) // 2)
        self.stages = (spec.seeds[:half], spec.seeds[half:])
        # A verdict on fewer images than this would stop good settings by bad luck.
        self.can_prune = bool(self.stages[1]) and half * len(spec.prompts) >= _MIN_IMAGES_TO_PRUNE

    def objective(self, trial: Any, study: Any) -> tuple[float, float]:
        import optuna

        from autolora.stats import mean_ci95

        started = time.monotonic()
        params = _suggest(trial, self.spec.methods, self.default_cfg)
        trial.set_user_attr("settings", json.dumps(params))
        floor = self.spec.floor if self.spec.floor is not None else study.user_attrs.get("floor")
        records = []
        for stage, seeds in enumerate(self.stages):
            records += self._generate(trial.number, params, seeds)
            trial.set_user_attr("images", len(records))
            adherence = self._adherence(records)
            trial.set_user_attr("seconds", time.monotonic() - started)
            if stage == 0 and self.can_prune and floor is not None and mean_ci95(adherence)[2] < floor:
                # Even the interval's upper end is below the floor: the remaining seeds would not save it.
                raise optuna.TrialPruned()
        diversity = self._diversity(records)
        adherence_mean, adherence_low, adherence_high = mean_ci95(adherence)
        diversity_mean, diversity_low, diversity_high = mean_ci95(diversity)
        if floor is None:  # the reference trial sets the relative floor
            floor = self.spec.floor_ratio * adherence_mean
            study.set_user_attr("floor", floor)
        trial.set_user_attr("diversity_ci", [diversity_low, diversity_high])
        trial.set_user_attr("adherence_ci", [adherence_low, adherence_high])
        # Optuna's constraint (<= 0 is feasible): the floor minus the trial's adherence.
        trial.set_constraint("adherence_floor", floor - adherence_mean)
        trial.set_user_attr("constraint", floor - adherence_mean)
        trial.set_user_attr("seconds", time.monotonic() - started)
        return diversity_mean, adherence_mean

    def _generate(self, number: int, params: dict[str, Any], seeds: Sequence[int]) -> list[Any]:
        """Images of every prompt for ``seeds`` (consecutive seeds run as one batch), saved under trials/."""
        from autolora.images import save_png
        from autolora.metrics.registry import ImageRecord
        from autolora.pipelines import generate

        records = []
        for prompt_index, prompt in enumerate(self.spec.prompts):
            for run in _consecutive_runs(seeds):
                images = generate(
                    self.pipe,
                    prompt,
                    **params,
                    num_inference_steps=self.spec.num_inference_steps,
                    seed=run[0],
                    num_images=len(run),
                    progress=False,
                )
                for seed, image in zip(run, images, strict=True):
                    meta = {"prompt": prompt, "seed": seed, "trial": number, **params}
                    path = self.out / "trials" / f"{number:04d}" / f"p{prompt_index:03d}-s{seed:06d}.png"
                    save_png(image, path, meta)
                    records.append(ImageRecord(image=image, meta=meta, path=path))
        return records

    def _evaluate(self, records: list[Any], metric: str) -> pd.DataFrame:
        from autolora.metrics import evaluate

        return evaluate(
            records,
            [metric],
            group_by=("prompt",),
            cache_dir=self.out / "cache",
            options={k: v for k, v in self.spec.metric_options.items() if k == metric},
        )

    def _adherence(self, records: list[Any]) -> list[float]:
        frame = self._evaluate(records, self.spec.adherence_metric).per_image
        if self.spec.adherence_column not in frame.columns:
            raise ConfigError(
                f"metric {self.spec.adherence_metric!r} has no column {self.spec.adherence_column!r};"
                f" its columns: {', '.join(c for c in frame.columns if c not in ('path', 'sha256', 'prompt'))}"
            )
        return frame[self.spec.adherence_column].tolist()

    def _diversity(self, records: list[Any]) -> list[float]:
        """The diversity of each prompt's images (one value per prompt)."""
        frame = self._evaluate(records, self.spec.diversity_metric).per_group
        return frame[self.spec.diversity_metric].tolist()


def _consecutive_runs(seeds: Sequence[int]) -> list[list[int]]:
    """``seeds`` cut into runs of consecutive numbers: ``generate`` gives image i the seed ``seed + i``."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return runs


def _trial_line(trial: Any) -> str:
    settings = _settings_text(json.loads(trial.user_attrs.get("settings", "{}")))
    if trial.values is None:
        return f"trial {trial.number} {settings}: {trial.state.name.lower()} after {trial.user_attrs.get('images', 0)} images"
    diversity, adherence = trial.values
    feasible = "meets the floor" if trial.user_attrs.get("constraint", 0) <= 0 else "below the floor"
    return (
        f"trial {trial.number} {settings}: diversity {diversity:.3f}, adherence {adherence:.3f} ({feasible})"
    )


def _settings_text(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={_plain(v)}" for k, v in settings.items())


def _plain(value: Any) -> str:
    return (
        ",".join(f"{v:g}" for v in value)
        if isinstance(value, (list, tuple))
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


# --- Results ------------------------------------------------------------------------------------


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per finished trial: its method and settings, both objectives with intervals, the front."""
    from autolora.pareto import pareto_mask

    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.values is None:
            continue
        settings = json.loads(trial.user_attrs["settings"])
        label = _METHOD_LABELS[trial.params["method"]]
        rows.append(
            {
                "trial": trial.number,
                "method": label,
                "settings": _settings_text({k: v for k, v in settings.items() if k != "method"}),
                "diversity": trial.values[0],
                "diversity_low": trial.user_attrs["diversity_ci"][0],
                "diversity_high": trial.user_attrs["diversity_ci"][1],
                "adherence": trial.values[1],
                "adherence_low": trial.user_attrs["adherence_ci"][0],
                "adherence_high": trial.user_attrs["adherence_ci"][1],
                "feasible": trial.user_attrs["constraint"] <= 0,
                "images": trial.user_attrs["images"],
                "params": settings,
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["on_front"] = pareto_mask(frame[["diversity", "adherence"]].to_numpy().tolist())
    return frame


_METHOD_LABELS = {"lora": "LoRA+CFG", "autolora": "AutoLoRA", "interval-cfg": "interval CFG", "cads": "CADS"}


def recommend(trials: pd.DataFrame) -> pd.Series | None:
    """The most varied front setting that meets the floor; else the most adherent trial."""
    if trials.empty:
        return None
    feasible = trials[trials["on_front"] & trials["feasible"]]
    if not feasible.empty:
        return feasible.sort_values(["diversity", "adherence"], ascending=False).iloc[0]
    return trials.sort_values("adherence", ascending=False).iloc[0]


def _write_results(study: Any, spec: TuneSpec, out: Path) -> TuneResult:
    from autolora.experiments.report import pareto_plots
    from autolora.images import atomic_write_bytes

    trials = trials_frame(study)
    floor = spec.floor if spec.floor is not None else study.user_attrs.get("floor")
    files: list[Path] = []
    if trials.empty:
        return TuneResult(trials, None, floor, files)
    best = recommend(trials)
    table = trials.drop(columns=["params"])
    table.to_csv(out / "front.csv", index=False)
    atomic_write_bytes(out / "front.md", _front_markdown(table, spec, floor, best).encode())
    files += [out / "front.csv", out / "front.md"]
    summary = _plot_summary(trials, spec)
    figures = pareto_plots(
        summary,
        ["trial", "settings"],
        out,
        floor=(spec.adherence_column, floor),
        label=lambda cell: f"#{cell[1]} {cell[2]}",
    )
    files += [path for _, path in figures]
    atomic_write_bytes(out / PRESET_FILE, _preset_toml(spec, best, floor).encode())
    files.append(out / PRESET_FILE)
    return TuneResult(trials, best.to_dict(), floor, files)


def _plot_summary(trials: pd.DataFrame, spec: TuneSpec) -> pd.DataFrame:
    """The trials in the report's summary layout (variant = method), for its Pareto plot."""
    rows = []
    for row in trials.itertuples():
        cell = {"variant": row.method, "trial": row.trial, "settings": row.settings}
        rows.append({**cell, "metric": "diversity", "mean": row.diversity})
        rows.append({**cell, "metric": spec.adherence_column, "mean": row.adherence})
    return pd.DataFrame(rows)


def _front_markdown(table: pd.DataFrame, spec: TuneSpec, floor: float | None, best: pd.Series) -> str:
    lines = [
        "# autolora tune",
        "",
        f"Model {spec.model}, LoRA(s) {', '.join(lora.source for lora in spec.loras)};"
        f" {len(spec.prompts)} prompt(s) x {len(spec.seeds)} paired seeds per trial."
        f" Diversity: {spec.diversity_metric} (mean over prompts); adherence: {spec.adherence_metric}"
        f" {spec.adherence_column} (mean over images); adherence floor: {_plain(floor)}."
        " Intervals: 95% percentile bootstrap.",
        "",
        f"Recommended: trial {best.trial}, {best.method} {best.settings}.",
        "",
        "| trial | method | settings | diversity | adherence | meets floor | on front | images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.sort_values(["on_front", "adherence"], ascending=False).itertuples():
        lines.append(
            f"| {row.trial} | {row.method} | {row.settings} | {_ci(row.diversity, row.diversity_low, row.diversity_high)}"
            f" | {_ci(row.adherence, row.adherence_low, row.adherence_high)} | {'yes' if row.feasible else 'no'}"
            f" | {'yes' if row.on_front else 'no'} | {row.images} |"
        )
    return "\n".join(lines) + "\n"


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _preset_toml(spec: TuneSpec, best: pd.Series, floor: float | None) -> str:
    """The recommended setting as a sweep file; its measured scores ride along as comments."""
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in best.params.items()}
    if spec.num_inference_steps is not None:
        params["num_inference_steps"] = spec.num_inference_steps
    lines = [
        f"# autolora tune: trial {best.trial} ({best.method}), recommended at adherence floor {_plain(floor)}",
        f"# diversity = {_ci(best.diversity, best.diversity_low, best.diversity_high)}",
        f"# {spec.adherence_column} = {_ci(best.adherence, best.adherence_low, best.adherence_high)}",
        'name = "tuned"',
        f"model = {_toml(spec.model)}",
        f"prompts = {_toml(list(spec.prompts))}",
        f"seeds = {_toml(list(spec.seeds))}",
        "",
    ]
    for lora in spec.loras:
        lines += ["[[loras]]", *(f"{k} = {_toml(v)}" for k, v in vars(lora).items() if v is not None), ""]
    lines += ["[generate]", *(f"{k} = {_toml(v)}" for k, v in params.items()), ""]
    lines += ["[metrics]", f"names = {_toml([spec.diversity_metric, spec.adherence_metric])}", ""]
    for name, options in spec.metric_options.items():
        lines += [f"[metrics.options.{_toml(name)}]", *(f"{k} = {_toml(v)}" for k, v in options.items()), ""]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    """A TOML value: JSON spells strings, numbers, booleans and lists the same way (bar infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)
