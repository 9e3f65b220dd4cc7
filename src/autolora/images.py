"""Image files with their generation parameters, and labelled grids.

Every PNG autolora writes carries its parameters twice in text chunks: an A1111-style
``parameters`` string (read by A1111, ComfyUI and civitai) and the exact values as JSON
under ``autolora``. Files are written atomically so an interrupted run never leaves a
truncated image behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, PngImagePlugin

PARAMS_KEY = "autolora"
#: Image files autolora reads (folders to evaluate, LoRA training images).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# A1111 writes these fields under these names; anything else follows as "Key: value".
_A1111_NAMES = {
    "num_inference_steps": "Steps",
    "seed": "Seed",
    "cfg_lora": "CFG scale",
    "model": "Model",
    "height": None,
    "width": None,
}


def a1111_parameters(params: Mapping[str, Any]) -> str:
    """Format ``params`` as an A1111 ``parameters`` string: prompt, negative prompt, then key: value pairs."""
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = []
    for key, value in params.items():
        if key in ("prompt", "negative_prompt") or value is None:
            continue
        name = _A1111_NAMES.get(key, key.replace("_", " ").capitalize())
        if name is None:
            continue
        fields.append(f"{name}: {value}")
    if params.get("width") and params.get("height"):
        fields.append(f"Size: {params['width']}x{params['height']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the permissions of any newly created file (0666 less the umask), not the temporary
    file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # The only portable way to read the umask is to set it; it is put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_png(image: Image.Image, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Save ``image`` as a PNG at ``path`` (atomically) with ``params`` in its text chunks."""
    import io

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(params))
    info.add_text(PARAMS_KEY, json.dumps(dict(params), sort_keys=True, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def read_png_params(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON parameters autolora stored in a PNG, or None when the file has none."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}) or {}
    raw = text.get(PARAMS_KEY)
    return json.loads(raw) if raw else None


def make_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """Tile ``rows`` of equally sized images into one image, with optional row and column labels."""
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one image")
    w, h = rows[0][0].size
    n_cols = max(len(r) for r in rows)
    label_w = 0 if not row_labels else 8 + 6 * max(len(s) for s in row_labels)
    label_h = 0 if not col_labels else 14
    grid = Image.new(
        "RGB",
        (label_w + n_cols * (w + pad) + pad, label_h + len(rows) * (h + pad) + pad),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(col_labels or []):
        draw.text((label_w + pad + j * (w + pad), 1), str(text), fill="black")
    for i, row in enumerate(rows):
        y = label_h + pad + i * (h + pad)
        if row_labels:
            draw.text((4, y + h // 2 - 5), str(row_labels[i]), fill="black")
        for j, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((w, h)), (label_w + pad + j * (w + pad), y))
    return grid
