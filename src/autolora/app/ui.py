"""The web page of ``autolora app`` (Gradio): controls, one column per method, metrics, the command line.

Generate runs as a chain of events: ``prepare`` checks the controls once into a ``Request``, then each
method's column is rendered from that same request (so every column has its own progress bar and a
control moved mid-run cannot mix two requests), then the metrics are measured. Gradio's queue runs one
event at a time (``default_concurrency_limit=1``); Stop is outside the queue and ends the running column
at its next step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pandas as pd

from autolora.app.engine import METRIC_COLUMNS, Controls, Engine, GenerationCancelled, Request, title
from autolora.cli import one_line
from autolora.cli.generate import COMPARE_METHODS
from autolora.errors import AutoLoRAError
from autolora.params import BranchMode

# Telemetry would send requests off the machine; a local tool has no reason to.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr

#: The tabs for features this version does not have: they say so instead of offering a button.
UNAVAILABLE = {
    "Make a LoRA": "Making a LoRA from uploaded images is not in the app yet. On the command line, "
    "`autolora synth --prior PRIOR --ref a.png b.png --out my.safetensors` makes one with a prior trained by "
    "`autolora prior train` on a bank of LoRAs of this model (docs/synthesis.md); the miniature world ships "
    "no prior yet.",
    "Tune": "Tuning is not in the app yet. On the command line, `autolora tune --model MODEL --lora FILE "
    "--prompt ... --out DIR` searches the guidance settings for this LoRA and writes the Pareto front and a "
    "`tuned.toml` preset that `autolora generate --preset` reads (docs/tradeoffs.md).",
}
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
    # The page's "off" values: an unticked box, and 0 for CADS noise and the drift threshold.
    fields |= {
        "gamma_end": fields["gamma_end"] if ramp else None,
        "cfg_interval": sigmas[1:] if sigmas[0] else None,
        "cads_noise": fields["cads_noise"] or None,
        "cache_threshold": fields["cache_threshold"] or None,
    }
    try:
        request = engine.request(Controls(**fields, interval=interval))
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


def build_app(engine: Engine) -> gr.Blocks:
    """The Blocks app on ``engine``: a Compare tab, and placeholders for features not in this version."""
    choices = engine.lora_choices()
    with gr.Blocks(title="autolora", analytics_enabled=False) as app:
        gr.Markdown(
            f"## AutoLoRA on `{engine.model}`\nThe same seeds side by side: the base model with CFG, the "
            "LoRA model with CFG, and AutoLoRA guidance between them."
        )
        with gr.Tab("Compare"), gr.Row():
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
        for tab, text in UNAVAILABLE.items():
            with gr.Tab(tab):
                gr.Markdown(text)

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
    return app


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
    cfg = {"minimum": 1.0, "maximum": 15.0, "step": 0.5, "value": engine.default_cfg}
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
            step=0.05,
            label="LoRA scale",
            elem_id="lora-scale",
        ),
        "gamma": gr.Slider(0.0, 3.0, value=1.5, step=0.05, label="gamma (AutoLoRA)", elem_id="gamma"),
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
            0.0, 1.0, value=0.0, step=0.05, label="CADS noise (base, LoRA; 0 = off)", elem_id="cads-noise"
        ),
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
