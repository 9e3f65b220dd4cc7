"""Run a sweep into a folder: generate every missing image, index it, then compute the metrics.

Under ``accelerate launch`` (or torchrun) each process owns the work items whose stable index
is congruent to its rank modulo the number of processes, so the split is deterministic and
every image is made by exactly one process. All processes write into the same index; the main
process computes the metrics once every shard is done.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm

from autolora.errors import ConfigError
from autolora.experiments.config import SweepConfig, WorkItem
from autolora.experiments.index import CONFIG_NAME, IMAGES_DIR, RunIndex
from autolora.images import atomic_write_bytes, read_png_params, save_png
from autolora.provenance import git_revision, package_versions

# A process that finished its shard waits at a barrier for the slowest one before the metrics;
# torch.distributed's default of 30 minutes is shorter than a shard of a paper-sized sweep.
_BARRIER_TIMEOUT = timedelta(days=7)


@dataclass
class SweepSummary:
    """What one process did: images it owned, generated, and found already done."""

    owned: int
    generated: int
    skipped: int
    metrics_computed: bool


def run_sweep(
    config: SweepConfig,
    run_dir: str | Path,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Generate the images of ``config`` missing from ``run_dir``, then compute its metrics (main process)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive integer, got {limit}")
    run_dir = Path(run_dir)
    state = PartialState(cpu=_cpu_processes(), timeout=_BARRIER_TIMEOUT)
    check_inputs(config)

    # 1. The main process prepares the folder; the others open it once it exists.
    if state.is_main_process:
        _prepare_run_folder(config, run_dir, state.num_processes)
    state.wait_for_everyone()

    # 2. Every process takes its share of the work items and skips those already done.
    items = config.work_items()[:limit]
    mine = [item for item in items if item.index % state.num_processes == state.process_index]
    provenance = {"versions": package_versions(), "git_revision": git_revision()}
    with RunIndex(run_dir) as index:
        todo = _pending(mine, run_dir, index, config.hash, state.process_index, provenance)
        _generate(config, todo, run_dir, index, state, provenance, progress)
    state.wait_for_everyone()

    # 3. The main process evaluates every image of the sweep.
    computed = False
    if state.is_main_process and config.metrics.names:
        from autolora.experiments.evaluation import compute_metrics

        computed = compute_metrics(config, items, run_dir, progress=progress)
    state.wait_for_everyone()
    return SweepSummary(
        owned=len(mine), generated=len(todo), skipped=len(mine) - len(todo), metrics_computed=computed
    )


def _prepare_run_folder(config: SweepConfig, run_dir: Path, num_processes: int) -> None:
    """Create (or reopen) ``run_dir``: drop partial writes, record the sweep in the index and ``sweep.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_partial_writes(run_dir)
    # WAL needs memory shared by every writer: one host. Across nodes the rollback journal works.
    one_host = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes)) == num_processes
    with RunIndex(run_dir, journal_mode="WAL" if one_host else "DELETE") as index:
        index.add_sweep(config.hash, config.name, config.to_dict())
    described = {**config.to_dict(), "axes": config.swept_keys(), "group_by": config.group_by}
    atomic_write_bytes(run_dir / CONFIG_NAME, json.dumps(described, indent=2, sort_keys=True).encode())


def _cpu_processes() -> bool:
    """Whether the processes must join a CPU (gloo) process group.

    accelerate's PartialState only joins a torchrun process group on CPU when told so; without a
    GPU every process would otherwise run the whole sweep alone.
    """
    import torch

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available())


def check_inputs(config: SweepConfig) -> None:
    """Fail before any model is loaded: unknown metrics or options, missing, pickle or corrupt LoRA files."""
    from autolora.lora import check_lora_source

    check_metrics(config)
    for spec in config.lora_specs():
        check_lora_source(spec.source, weight_name=spec.weight_name)


def check_metrics(config: SweepConfig) -> None:
    """Fail before generating anything when a metric name is unknown."""
    if not config.metrics.names:
        return
    from autolora.metrics import registry

    for name in config.metrics.names:
        registry.get_metric(name, **config.metrics.options.get(name, {}))


def _remove_partial_writes(run_dir: Path) -> None:
    """Delete temporary files left by a process killed while writing an image (never renamed, never indexed)."""
    images = run_dir / IMAGES_DIR
    if images.is_dir():
        for tmp in images.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _pending(
    items: Sequence[WorkItem],
    run_dir: Path,
    index: RunIndex,
    config_hash: str,
    process_index: int,
    provenance: dict[str, Any],
) -> list[WorkItem]:
    """Items still to generate; an image on disk without its row (killed between the two) is indexed as is."""
    done = index.keys()
    todo = []
    for item in items:
        path = run_dir / item.relative_path
        if not path.is_file():
            todo.append(item)
        elif item.key not in done:
            params = read_png_params(path) or {}
            if params.get("key") != item.key:
                todo.append(item)
                continue
            _index_image(index, item, run_dir, config_hash, process_index, provenance)
    return todo


def _generate(
    config: SweepConfig,
    todo: Sequence[WorkItem],
    run_dir: Path,
    index: RunIndex,
    state: PartialState,
    provenance: dict[str, Any],
    progress: bool,
) -> None:
    """Generate ``todo``: one pipeline per (model, LoRA set), consecutive seeds batched together."""
    import torch

    import autolora

    # Items of one setup are contiguous after a stable sort, so each pipeline is loaded once.
    setups = list(dict.fromkeys(item.setup for item in todo))
    ordered = sorted(todo, key=lambda item: setups.index(item.setup))
    bar = tqdm(
        total=len(ordered),
        desc=f"{config.name} [{state.process_index + 1}/{state.num_processes}]",
        unit="img",
        disable=not progress,
        position=state.process_index,
    )
    with bar:
        for (model, loras), group in itertools.groupby(ordered, key=lambda item: item.setup):
            pipe = autolora.load_pipeline(model, torch_dtype=config.torch_dtype, device=state.device)
            for lora in loras:
                autolora.load_lora(
                    pipe,
                    lora.source,
                    scale=lora.scale,
                    adapter_name=lora.adapter_name,
                    weight_name=lora.weight_name,
                )
            for batch in _batches(list(group), config.batch_size):
                first = batch[0]
                images = autolora.generate(
                    pipe, first.prompt, first.generation(num_images=len(batch)), progress=False
                )
                for item, image in zip(batch, images, strict=True):
                    save_png(image, run_dir / item.relative_path, {**item.record(), "key": item.key})
                    _index_image(index, item, run_dir, config.hash, state.process_index, provenance)
                    bar.update()
            # Free the accelerator before the next model (or the metrics' networks) is loaded.
            del pipe
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _batches(items: list[WorkItem], batch_size: int) -> Iterator[list[WorkItem]]:
    """Runs of items with the same prompt and parameters and consecutive seeds, at most ``batch_size`` long.

    ``generate`` gives image i the seed ``seed + i``, so a batch is pixel-identical to single images.
    """
    batch: list[WorkItem] = []
    for item in items:
        if batch and (
            len(batch) == batch_size
            or item.seed != batch[-1].seed + 1
            or (item.variant, item.prompt, item.params)
            != (batch[0].variant, batch[0].prompt, batch[0].params)
        ):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _index_image(
    index: RunIndex,
    item: WorkItem,
    run_dir: Path,
    config_hash: str,
    process_index: int,
    provenance: dict[str, Any],
) -> None:
    path = run_dir / item.relative_path
    index.add_image(
        key=item.key,
        item_index=item.index,
        config_hash=config_hash,
        params=item.record(),
        path=item.relative_path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        versions=provenance["versions"],
        git_revision=provenance["git_revision"],
        process_index=process_index,
    )


def describe_plan(config: SweepConfig, limit: int | None = None) -> str:
    """One line saying how many images the sweep makes, for the CLI's dry run."""
    items = config.work_items()[:limit]
    setups = len({item.setup for item in items})
    return (
        f"{config.name} ({config.hash}): {len(items)} images, {len(config.variants) or 1} variant(s), "
        f"{len(config.prompts)} prompt(s) x {len(config.seeds)} seed(s), {setups} pipeline setup(s); "
        f"metrics: {', '.join(config.metrics.names) or 'none'}"
    )
