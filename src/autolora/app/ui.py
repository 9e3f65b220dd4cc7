"""The web page of ``autolora app`` (Gradio): the Compare, Make a LoRA and Tune tabs on one ``Engine``.

Compare's Generate runs as a chain of events: ``prepare`` checks the controls once into a ``Request``,
then each method's column is rendered from that same request (so every column has its own progress bar
and a control moved mid-run cannot mix two requests), then the metrics are measured. Tune is one event
(``run_tune``) with a progress bar per trial; Make a LoRA is one event (``make_lora``). Gradio's queue
runs one event at a time (``default_concurrency_limit=1``) and the engine's lock keeps the pipeline to
one of them; Stop is outside the queue and ends the running column at its next step, or the search
after its running trial.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pandas as pd

from autolora.app.engine import (
    METRIC_COLUMNS,
    Controls,
    Engine,
    GenerationCancelled,
    Request,
    TuneControls,
    title,
)
from autolora.cli import one_line
from autolora.cli.generate import COMPARE_METHODS
from autolora.errors import AutoLoRAError
from autolora.params import BranchMode
from autolora.tune import METHODS as TUNE_METHODS

# Telemetry would send requests off the machine; a local tool has no reason to.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr

NO_PRIOR = (
    "**No prior loaded.** Making a LoRA from images needs a prior trained on a bank of LoRAs of this base "
    "model: `autolora bank build LORAS/ --base MODEL --rank 4 --out bank/ --encoder clip:MODEL` and "
    "`autolora prior train bank/ --out prior/` (docs/synthesis.md). Start the app with `--prior prior/`, or "
    "upload the prior's two files, `prior.json` and `prior.safetensors`, here."
)
#: The adherence metrics offered in the Tune tab (any other registered name can be typed in).
WORLD_ADHERENCE = ("world:style", "world:digit")
ADHERENCE = ("clip_score", "judge:pc_sa", "judge:cps")
TUNE_COLUMNS = ["trial", "method", "settings", "diversity", "adherence", "meets floor", "on front"]
EMPTY_METRICS = pd.DataFrame(columns=["method", *METRIC_COLUMNS.values()])
# The world's images are 32x32: enlarge them without blurring.
CSS = ".gallery img, .thumbnail-item img { image-rendering: pixelated; }"


def _error(error: AutoLoRAError) -> gr.Error:
    return gr.Error(one_line(error), print_exception=False)


def prepare(engine: Engine, values: dict[str, Any], session: str) -> tuple[Request, str]:
    """Check the controls' values (by name, as ``_controls`` names them) into one request."""
    fields = dict(values)
    interval = fields.pop("interval_start"), fields.pop("interval_end")
    ramp = fields.pop("gamma_ramp")
    sigmas = fields.pop("cfg_interval_on"), fields.pop("cfg_interval_lo"), fields.pop("cfg_interval_hi")
    tau = fields.pop("cads_tau_start"), fields.pop("cads_tau_end")
    # The page's "off" values: an unticked box, and 0 for CADS noise and the drift threshold.
    fields |= {
        "gamma_end": fields["gamma_end"] if ramp else None,
        "cfg_interval": sigmas[1:] if sigmas[0] else None,
        "cads_noise": fields["cads_noise"] or None,
        "cache_threshold": fields["cache_threshold"] or None,
    }
    try:
        request = engine.request(Controls(**fields, interval=interval, cads_tau=tau))
    except AutoLoRAError as error:
        raise _error(error) from None
    engine.clear_cancel(session)
    return request, request.command


def render_column(
    engine: Engine, request: Request, method: str, session: str, progress: Any = None
) -> list[tuple[str, str]]:
    """One column's images (path, caption) from ``request``, reporting each step to ``progress``."""
    name = title(method)

    def on_step(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, desc=f"{name}: step {done}/{total}")

    try:
        paths = engine.render(request, method, session=session, on_step=on_step)
    except GenerationCancelled as stop:
        raise gr.Error(str(stop), title="Stopped", print_exception=False) from None
    except AutoLoRAError as error:
        raise _error(error) from None
    return [(str(path), f"seed {request.options.params.seed + i}") for i, path in enumerate(paths)]


def upload_lora(engine: Engine, file: str | None) -> tuple[Any, str]:
    """Load an uploaded LoRA with ``load_lora``'s checks: the new dropdown, and a status line."""
    if not file:
        return gr.update(), ""
    try:
        source = engine.add_lora(file)
    except AutoLoRAError as error:
        return gr.update(), f"**Error:** {one_line(error)}"
    return gr.update(choices=engine.lora_choices(), value=source), f"Loaded {Path(file).name}."


def measure(engine: Engine, request: Request, columns: dict[str, list[tuple[str, str]]]) -> Any:
    """The metrics table of the finished columns."""
    from PIL import Image

    images = {method: [Image.open(path) for path, _ in column] for method, column in columns.items()}
    try:
        return engine.measure(request, images)
    except AutoLoRAError as error:
        raise _error(error) from None


def run_tune(engine: Engine, values: dict[str, Any], session: str, progress: Any = None) -> dict[str, Any]:
    """Check the Tune tab's values (and the Compare tab's LoRA, scale, prompt, steps) and run the search.

    Returns the tab's outputs by name: ``status`` (the recommendation, or ``**Error:** ...``), ``plot``,
    ``table``, ``choice`` (a dropdown update of the trials, front first), ``settings`` (trial -> its
    ``generate`` settings), ``files`` (``tuned.toml``, ``front.csv``) and ``command``.
    """
    prompts = tuple(line.strip() for line in (values["tune_prompts"] or "").splitlines() if line.strip())
    options = tuple(line.strip() for line in (values["metric_options"] or "").splitlines() if line.strip())
    outputs: dict[str, Any] = {
        "plot": None,
        "table": pd.DataFrame(columns=TUNE_COLUMNS),
        "choice": gr.update(choices=[], value=None),
        "settings": {},
        "files": None,
        "command": "",
    }
    try:
        request = engine.tune_request(
            TuneControls(
                lora=values["lora"],
                prompts=prompts or (values["prompt"],),
                lora_scale=values["lora_scale"],
                trials=values["trials"],
                seeds=values["seeds"],
                num_inference_steps=values["num_inference_steps"],
                methods=tuple(values["methods"] or ()),
                diversity_metric=values["diversity_metric"] or "",
                adherence_metric=values["adherence_metric"] or "",
                adherence_column=(values["adherence_column"] or "").strip() or None,
                metric_options=options,
                floor=values["floor"] or None,  # the page's 0: no absolute floor
                floor_ratio=values["floor_ratio"],
                sampler_seed=values["sampler_seed"],
            )
        )
    except AutoLoRAError as error:
        return {**outputs, "status": f"**Error:** {one_line(error)}"}
    outputs["command"] = request.command
    total = int(values["trials"])

    def on_trial(done: int, line: str) -> None:
        if progress is not None:
            progress((min(done, total), total), desc=line, unit="trials")

    try:
        result = engine.tune(request, session=session, on_trial=on_trial)
    except GenerationCancelled as stop:
        return {**outputs, "status": f"**Stopped:** {stop}"}
    except (AutoLoRAError, OSError) as error:
        # OSError: a metric's model that cannot be downloaded here (clip_score offline, a judge's server).
        message = one_line(error) if isinstance(error, AutoLoRAError) else str(error).splitlines()[0]
        return {**outputs, "status": f"**Error:** {message}"}
    found = _tune_outputs(result)
    return {**outputs, **found, "settings": {"lora": request.lora, "trials": found.get("settings", {})}}


def _tune_outputs(result: Any) -> dict[str, Any]:
    """The recommendation, the front's plot and table, the trials to pick from and the files of a finished search."""
    floor = "none" if result.floor is None else f"{result.floor:.3f}"
    if result.trials.empty:
        return {
            "status": f"**No trial finished:** every setting stopped early below the adherence floor {floor};"
            " lower the floor"
        }
    trials = result.trials.sort_values(["on_front", "adherence"], ascending=False)
    best = result.recommended
    status = (
        f"Recommended: trial {best['trial']}, {best['method']} {best['settings']}: diversity"
        f" {best['diversity']:.3f}, adherence {best['adherence']:.3f} (floor {floor});"
        f" {len(trials)} trials, {int(trials['on_front'].sum())} on the Pareto front."
    )
    if not best["feasible"]:
        status = (
            f"**No setting reached the adherence floor {floor}**: the recommended one is the most adherent."
            f" {status}"
        )
    table = pd.DataFrame(
        {
            "trial": trials["trial"],
            "method": trials["method"],
            "settings": trials["settings"],
            "diversity": trials["diversity"].round(3),
            "adherence": trials["adherence"].round(3),
            "meets floor": trials["feasible"].map({True: "yes", False: "no"}),
            "on front": trials["on_front"].map({True: "yes", False: "no"}),
        }
    )
    labels = [
        (f"trial {row.trial}: {row.method} {row.settings}", str(row.trial)) for row in trials.itertuples()
    ]
    by_name = {path.name: str(path) for path in result.files}
    plot = next((str(path) for path in result.files if path.name.startswith("pareto-")), None)
    return {
        "status": status,
        "plot": plot,
        "table": table,
        "choice": gr.update(choices=labels, value=str(best["trial"])),
        "settings": {str(row.trial): row.params for row in trials.itertuples()},
        "files": [by_name["tuned.toml"], by_name["front.csv"]],
    }


def setting_values(params: dict[str, Any]) -> dict[str, Any]:
    """The Compare tab's control values (by name) that reproduce a tuned ``generate`` setting.

    The CFG interval and CADS go off unless the setting uses them; gamma and w_base change only for an
    AutoLoRA setting (a LoRA+CFG setting is about the LoRA + CFG column).
    """
    interval, tau = params.get("cfg_interval"), params.get("cads_tau")
    values = {
        "lora_scale": params.get("lora_scale", 1.0),
        "cfg_lora": params["cfg_lora"],
        "cfg_interval_on": interval is not None,
        "cads_noise": params.get("cads_noise", 0.0),
    }
    if interval is not None:
        values |= {"cfg_interval_lo": interval[0], "cfg_interval_hi": interval[1]}
    if tau is not None:
        values |= {"cads_tau_start": tau[0], "cads_tau_end": tau[1]}
    if params["method"] == "autolora":
        values |= {"gamma": params["gamma"], "cfg_base": params["cfg_base"], "gamma_ramp": False}
    return values


def upload_prior(engine: Engine, files: list[str] | None) -> tuple[Any, str]:
    """A prior uploaded as its two files, checked against the app's model: the new prior (or no change), a status."""
    import hashlib
    import shutil

    if not files:
        return gr.update(), ""
    named = {Path(file).suffix.lower(): file for file in files}
    if set(named) != {".json", ".safetensors"} or len(files) != 2:
        return (
            gr.update(),
            "**Error:** upload the prior's two files together: prior.json and prior.safetensors",
        )
    digest = hashlib.sha256(b"".join(Path(file).read_bytes() for file in sorted(named.values())))
    folder = engine.out / "priors" / digest.hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, file in named.items():
        shutil.copyfile(file, folder / f"prior{suffix}")
    try:
        engine.check_prior(folder)
    except AutoLoRAError as error:
        return gr.update(), f"**Error:** {one_line(error)}"
    return str(folder), prior_text(engine, folder)


def prior_text(engine: Engine, prior: str | Path | None) -> str:
    """What the Make a LoRA tab says about its prior: which one it uses, or how to make one."""
    if prior is None:
        return NO_PRIOR
    loaded = engine.check_prior(prior)
    conditioning = (
        f"condition encoder `{loaded.encoder}`" if loaded.conditional else "inversion on this model"
    )
    return f"Prior `{prior}`: {loaded.kind}, base model `{loaded.layout.base}`, {conditioning}."


def make_lora(
    engine: Engine,
    prior: str | None,
    images: list[str] | None,
    name: str,
    seed: float,
    guidance: float,
    fit_steps: float = 200,
) -> tuple[Any, Any, str]:
    """Make a LoRA from the uploaded images: the LoRA dropdown (the new one chosen), its file, a status line."""
    if prior is None:
        return gr.update(), None, NO_PRIOR
    try:
        made = engine.make_lora(
            prior, images or [], seed=seed, guidance=guidance, fit_steps=fit_steps, name=name or ""
        )
    except AutoLoRAError as error:
        return gr.update(), None, f"**Error:** {one_line(error)}"
    status = f"Made {made.path.name} from {len(images or [])} image(s) in {made.seconds:.2f} s; it is chosen in the Compare tab."
    if made.warning:
        status += f" **Warning:** {made.warning}"
    return gr.update(choices=engine.lora_choices(), value=str(made.path)), str(made.path), status


def build_app(engine: Engine) -> gr.Blocks:
    """The Blocks app on ``engine``: the Compare tab, the Make a LoRA tab and the Tune tab."""
    choices = engine.lora_choices()
    with gr.Blocks(title="autolora", analytics_enabled=False) as app:
        gr.Markdown(
            f"## AutoLoRA on `{engine.model}`\nThe same seeds side by side: the base model with CFG, the "
            "LoRA model with CFG, and AutoLoRA guidance between them."
        )
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Compare", id="compare"), gr.Row():
                with gr.Column(scale=1, min_width=300):
                    controls, widgets = _controls(engine, choices)
                with gr.Column(scale=3):
                    with gr.Row():
                        galleries = {
                            method: gr.Gallery(
                                label=title(method),
                                elem_id=f"gallery-{method}",
                                columns=2,
                                format="png",
                                interactive=False,
                                # No "share": it would post the images to Hugging Face.
                                buttons=["download", "download_all", "fullscreen"],
                                object_fit="contain",
                                height="auto",
                            )
                            for method in COMPARE_METHODS
                        }
                    metrics = gr.Dataframe(
                        value=EMPTY_METRICS, label="Metrics per column", elem_id="metrics", interactive=False
                    )
                    command = gr.Textbox(
                        label="The same images from the command line",
                        elem_id="command",
                        buttons=["copy"],
                        interactive=False,
                    )
            with gr.Tab("Make a LoRA", id="make"):
                make = _make_tab(engine)
            with gr.Tab("Tune", id="tune"):
                tune = _tune_tab(engine)

        # A page opened later lists the LoRAs uploaded since the app started.
        app.load(lambda: gr.update(choices=engine.lora_choices()), None, controls["lora"])
        request_state = gr.State()
        session = gr.State()
        upload = widgets["upload"]
        upload.upload(lambda file: upload_lora(engine, file), upload, [controls["lora"], widgets["status"]])
        controls["lora"].input(
            lambda source: engine.scales.get(source, 1.0), controls["lora"], controls["lora_scale"]
        )

        def on_prepare(data: dict[Any, Any], request: gr.Request) -> tuple[Any, ...]:
            values = {name: data[component] for name, component in controls.items()}
            checked, line = prepare(engine, values, request.session_hash or "")
            return checked, request.session_hash or "", line, *([None] * len(galleries)), EMPTY_METRICS

        event = widgets["run"].click(
            on_prepare,
            set(controls.values()),
            [request_state, session, command, *galleries.values(), metrics],
        )
        events = [event]
        for method, gallery in galleries.items():
            event = event.success(_column(engine, method), [request_state, session], gallery)
            events.append(event)

        def on_measure(checked: Request, *columns: list[tuple[str, str]]) -> Any:
            return measure(engine, checked, dict(zip(galleries, columns, strict=True)))

        events.append(event.success(on_measure, [request_state, *galleries.values()], metrics))
        widgets["stop"].click(
            lambda session_id: engine.cancel(session_id or ""),
            session,
            None,
            cancels=events,
            queue=False,
        )
        _make_events(engine, make, controls["lora"])
        _tune_events(engine, tune, controls, tabs)
    return app


def _make_tab(engine: Engine) -> dict[str, Any]:
    """The Make a LoRA tab's widgets, by name."""
    gr.Markdown(
        "A LoRA from a few reference images in one sample of a synthesis prior, as `autolora synth` makes it "
        "(docs/synthesis.md); it is then offered in the Compare tab and downloadable."
    )
    widgets: dict[str, Any] = {"prior": gr.State(str(engine.prior) if engine.prior is not None else None)}
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            widgets["prior_status"] = gr.Markdown(prior_text(engine, engine.prior), elem_id="make-prior")
            widgets["prior_upload"] = gr.File(
                label="Upload a prior: prior.json and prior.safetensors",
                file_count="multiple",
                file_types=[".json", ".safetensors"],
                height=130,
                elem_id="make-prior-upload",
            )
            widgets["images"] = gr.File(
                label="Reference images", file_count="multiple", file_types=["image"], elem_id="make-images"
            )
            widgets["name"] = gr.Textbox(label="Name of the LoRA", elem_id="make-name")
            widgets["seed"] = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="make-seed")
            widgets["guidance"] = gr.Slider(
                0.0,
                5.0,
                value=1.0,
                step=0.5,
                label="guidance on the images (diffusion prior)",
                elem_id="make-guidance",
            )
            widgets["fit_steps"] = gr.Slider(
                1, 1000, value=200, step=1, label="inversion steps (PCA prior)", elem_id="make-fit-steps"
            )
            widgets["run"] = gr.Button("Make the LoRA", variant="primary", elem_id="make-run")
        with gr.Column(scale=2):
            widgets["status"] = gr.Markdown(elem_id="make-status")
            widgets["file"] = gr.File(label="The LoRA (.safetensors)", interactive=False, elem_id="make-file")
    return widgets


def _make_events(engine: Engine, make: dict[str, Any], lora: Any) -> None:
    """Prior upload, and Make the LoRA (queued like generation): its file, and the new LoRA chosen in ``lora``."""
    make["prior_upload"].upload(
        lambda files: upload_prior(engine, files), make["prior_upload"], [make["prior"], make["prior_status"]]
    )
    inputs = [make[name] for name in ("prior", "images", "name", "seed", "guidance", "fit_steps")]
    make["run"].click(
        lambda *values: make_lora(engine, *values), inputs, [lora, make["file"], make["status"]]
    )


def _tune_tab(engine: Engine) -> dict[str, Any]:
    """The Tune tab's widgets, by name: ``run_tune``'s inputs and outputs, Stop and Use this setting."""
    gr.Markdown(
        "Searches guidance settings for the Compare tab's LoRA, at its LoRA scale and steps, with `autolora "
        "tune` (docs/tradeoffs.md): each trial is one setting (LoRA+CFG, AutoLoRA, interval CFG or CADS) from "
        "the same seeds, scored on diversity and adherence; the first is LoRA+CFG at the model's default "
        "scale. Stop ends the search after the running trial; the same search run again resumes it."
    )
    adherence = (WORLD_ADHERENCE if engine.is_world else ()) + ADHERENCE
    widgets: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            widgets["tune_prompts"] = gr.Textbox(
                label="Prompts, one a line (empty: the Compare tab's prompt)", lines=2, elem_id="tune-prompts"
            )
            with gr.Row():
                widgets["run"] = gr.Button(
                    "Tune", variant="primary", scale=3, min_width=0, elem_id="tune-run"
                )
                widgets["stop"] = gr.Button("Stop", variant="stop", scale=1, min_width=0, elem_id="tune-stop")
            widgets |= {
                "trials": gr.Slider(1, 50, value=4, step=1, label="trials", elem_id="tune-trials"),
                "seeds": gr.Slider(
                    2, 16, value=4, step=1, label="seeds 0..N-1 per prompt", elem_id="tune-seeds"
                ),
                "methods": gr.CheckboxGroup(
                    list(TUNE_METHODS), value=list(TUNE_METHODS), label="methods", elem_id="tune-methods"
                ),
                "diversity_metric": gr.Dropdown(
                    ["diversity", "vendi"],
                    value="diversity",
                    allow_custom_value=True,
                    label="diversity metric",
                    elem_id="tune-diversity",
                ),
                "adherence_metric": gr.Dropdown(
                    list(adherence),
                    value=adherence[0],
                    allow_custom_value=True,
                    label="adherence metric",
                    elem_id="tune-adherence",
                ),
                "adherence_column": gr.Textbox(
                    label="its column (empty: the metric's own, e.g. sa for judge:pc_sa)",
                    elem_id="tune-column",
                ),
                "metric_options": gr.Textbox(
                    label="metric options, METRIC.KEY=VALUE one a line", lines=2, elem_id="tune-options"
                ),
                "floor": gr.Number(
                    value=0, minimum=0, label="adherence floor (0: the fraction below)", elem_id="tune-floor"
                ),
                "floor_ratio": gr.Slider(
                    0.05,
                    1.0,
                    value=0.9,
                    step=0.05,
                    label="floor: fraction of LoRA+CFG's adherence",
                    elem_id="tune-floor-ratio",
                ),
                "sampler_seed": gr.Number(
                    value=0,
                    precision=0,
                    minimum=0,
                    label="seed of the optimiser",
                    elem_id="tune-sampler-seed",
                ),
            }
        with gr.Column(scale=3):
            widgets["status"] = gr.Markdown(elem_id="tune-status")
            widgets["table"] = gr.Dataframe(
                value=pd.DataFrame(columns=TUNE_COLUMNS),
                label="Trials, the Pareto front first",
                interactive=False,
                wrap=True,
                column_widths=["7%", "12%", "41%", "10%", "10%", "10%", "10%"],
                elem_id="tune-front",
            )
            with gr.Row():
                widgets["plot"] = gr.Image(
                    label="Pareto front", type="filepath", interactive=False, scale=3, elem_id="tune-plot"
                )
                with gr.Column(scale=2):
                    widgets["choice"] = gr.Dropdown([], label="setting", elem_id="tune-choice")
                    widgets["use"] = gr.Button("Use this setting", elem_id="tune-use")
                    widgets["files"] = gr.File(
                        label="tuned.toml (autolora generate --preset) and front.csv",
                        file_count="multiple",
                        interactive=False,
                        elem_id="tune-files",
                    )
            widgets["command"] = gr.Textbox(
                label="The same search from the command line",
                buttons=["copy"],
                interactive=False,
                elem_id="tune-command",
            )
            widgets["settings"] = gr.State({})
    return widgets


#: ``run_tune``'s inputs from the Tune tab, and from the Compare tab.
TUNE_INPUTS = (
    "tune_prompts", "trials", "seeds", "methods", "diversity_metric", "adherence_metric", "adherence_column",
    "metric_options", "floor", "floor_ratio", "sampler_seed",
)  # fmt: skip
COMPARE_INPUTS = ("prompt", "lora", "lora_scale", "num_inference_steps")
#: The Compare tab's controls that Use this setting may change.
SETTING_CONTROLS = (
    "lora", "lora_scale", "gamma", "gamma_ramp", "cfg_base", "cfg_lora", "cfg_interval_on", "cfg_interval_lo",
    "cfg_interval_hi", "cads_noise", "cads_tau_start", "cads_tau_end",
)  # fmt: skip


def _tune_events(engine: Engine, tune: dict[str, Any], controls: dict[str, Any], tabs: Any) -> None:
    """Tune (queued like generation, with a progress bar per trial), Stop, and Use this setting."""
    inputs = {name: tune[name] for name in TUNE_INPUTS} | {name: controls[name] for name in COMPARE_INPUTS}
    outputs = {
        name: tune[name] for name in ("status", "plot", "table", "choice", "settings", "files", "command")
    }

    def on_tune(
        data: dict[Any, Any],
        request: gr.Request,
        progress: Any = gr.Progress(),  # noqa: B008
    ) -> dict[Any, Any]:
        session = request.session_hash or ""
        engine.clear_cancel(session)
        values = run_tune(engine, {name: data[c] for name, c in inputs.items()}, session, progress)
        return {outputs[name]: value for name, value in values.items()}

    event = tune["run"].click(on_tune, set(inputs.values()), list(outputs.values()))

    def on_stop(request: gr.Request) -> None:
        engine.cancel(request.session_hash or "")

    tune["stop"].click(on_stop, None, None, cancels=[event], queue=False)

    def on_use(choice: str | None, settings: dict[str, Any]) -> dict[Any, Any]:
        if not choice or choice not in settings.get("trials", {}):
            return {tune["status"]: "**Error:** run a search, then pick one of its settings"}
        values = setting_values(settings["trials"][choice]) | {"lora": settings["lora"]}
        return {controls[name]: value for name, value in values.items()} | {tabs: gr.Tabs(selected="compare")}

    tune["use"].click(
        on_use,
        [tune["choice"], tune["settings"]],
        [tune["status"], tabs, *(controls[name] for name in SETTING_CONTROLS)],
    )


def _column(engine: Engine, method: str) -> Any:
    """The event function that renders ``method``'s column."""

    def column(
        checked: Request,
        session_id: str,
        # Gradio finds the progress tracker of an event by this default value.
        progress: Any = gr.Progress(),  # noqa: B008
    ) -> list[tuple[str, str]]:
        return render_column(engine, checked, method, session_id, progress)

    return column


def _controls(engine: Engine, choices: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request's controls (by ``Controls`` field) and the other widgets of the left column, in page order."""
    # Up to 4x the default: the strongest CFG that tune tries (interval CFG), so its settings fit.
    cfg = {
        "minimum": 1.0,
        "maximum": max(15.0, 4 * engine.default_cfg),
        "step": 0.01,
        "value": engine.default_cfg,
    }
    # Steps: the demo's 20 on the world; elsewhere 30, a usual count for SD-family schedulers.
    steps = 20 if engine.is_world else 30
    lora = engine.default_lora()
    controls: dict[str, Any] = {
        "prompt": gr.Textbox(label="Prompt", value=engine.default_prompt(), elem_id="prompt"),
        "negative_prompt": gr.Textbox(label="Negative prompt", elem_id="negative-prompt"),
    }
    with gr.Row():
        widgets = {
            "run": gr.Button("Generate", variant="primary", scale=3, min_width=0, elem_id="generate"),
            "stop": gr.Button("Stop", variant="stop", scale=1, min_width=0, elem_id="stop"),
        }
    controls["lora"] = gr.Dropdown(choices, value=lora, label="LoRA", elem_id="lora")
    widgets["upload"] = gr.File(
        label="Upload a LoRA (.safetensors)", file_types=[".safetensors"], height=130, elem_id="lora-upload"
    )
    widgets["status"] = gr.Markdown(elem_id="lora-status")
    controls |= {
        "lora_scale": gr.Slider(
            0.0,
            2.0,
            value=engine.scales.get(lora or "", 1.0),
            step=0.01,
            label="LoRA scale",
            elem_id="lora-scale",
        ),
        "gamma": gr.Slider(0.0, 3.0, value=1.5, step=0.01, label="gamma (AutoLoRA)", elem_id="gamma"),
        "gamma_ramp": gr.Checkbox(
            value=False, label="ramp gamma linearly to the value below", elem_id="gamma-ramp"
        ),
        "gamma_end": gr.Slider(
            0.0, 3.0, value=1.5, step=0.05, label="gamma at the last step", elem_id="gamma-end"
        ),
        "cfg_base": gr.Slider(**cfg, label="w_base (CFG of the base branch)", elem_id="cfg-base"),
        "cfg_lora": gr.Slider(**cfg, label="w_lora (CFG of the LoRA branch)", elem_id="cfg-lora"),
        "interval_start": gr.Slider(
            0.0, 1.0, value=0.0, step=0.05, label="interval start", elem_id="interval-a"
        ),
        "interval_end": gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="interval end", elem_id="interval-b"),
        "num_inference_steps": gr.Slider(1, 100, value=steps, step=1, label="steps", elem_id="steps"),
        "seed": gr.Number(
            value=0, precision=0, minimum=0, label="seed (image i uses seed + i)", elem_id="seed"
        ),
        "num_images": gr.Slider(1, 16, value=4, step=1, label="images per column", elem_id="num-images"),
    }
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        controls |= _advanced_controls()
    return controls, widgets


def _advanced_controls() -> dict[str, Any]:
    """The branch mode, the delta cache (AutoLoRA), and CFG interval and CADS (the LoRA+CFG and base columns)."""
    return {
        "branch_mode": gr.Radio(
            list(get_args(BranchMode)), value="batched", label="branch mode", elem_id="branch-mode"
        ),
        "cache_interval": gr.Slider(
            1,
            10,
            value=1,
            step=1,
            label="delta cache: reference branch every K steps",
            elem_id="cache-interval",
        ),
        "cache_threshold": gr.Number(
            value=0, minimum=0, label="delta cache: drift threshold (0 = off)", elem_id="cache-threshold"
        ),
        "cfg_interval_on": gr.Checkbox(
            value=False, label="CFG only at noise levels in (low, high] (base, LoRA)", elem_id="cfg-interval"
        ),
        "cfg_interval_lo": gr.Number(value=0.28, minimum=0, label="CFG interval low sigma", elem_id="cfg-lo"),
        "cfg_interval_hi": gr.Number(
            value=5.42, minimum=0, label="CFG interval high sigma", elem_id="cfg-hi"
        ),
        "cads_noise": gr.Slider(
            0.0, 1.0, value=0.0, step=0.001, label="CADS noise (base, LoRA; 0 = off)", elem_id="cads-noise"
        ),
        "cads_tau_start": gr.Number(value=0.6, minimum=0, maximum=1, label="CADS tau1", elem_id="cads-tau1"),
        "cads_tau_end": gr.Number(value=0.9, minimum=0, maximum=1, label="CADS tau2", elem_id="cads-tau2"),
    }


def launch(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
) -> gr.Blocks:
    """Serve the app on ``host:port`` (Gradio's share link with ``share``); ``block=False`` returns at once."""
    app = build_app(engine)
    app.queue(default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        allowed_paths=[str(engine.out)],
        css=CSS,
        ssr_mode=False,
        quiet=not block,
    )
    return app
