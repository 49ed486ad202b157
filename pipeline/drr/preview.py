"""Contact sheet of a simulate-drr store: each finished item's views, its id and positive labels."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import numpy as np
import zarr

from pipeline.drr.store import read_status
from pipeline.runtime import atomic_path
from schemas.drr import ItemStatus, PreviewConfig
from schemas.errors import PipelineError
from schemas.labels import CT_RATE_LABELS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_LINE = 12  # pixel height of one line of PIL's default bitmap font


def _thumbnail(img: np.ndarray, side: int):
    from PIL import Image

    as8 = (img.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)  # uint16 -> uint8
    return Image.fromarray(as8, mode="L").resize((side, side), Image.Resampling.BILINEAR)


def contact_sheet(cfg: PreviewConfig) -> int:
    """Write the PNG; returns the number of items shown."""
    from PIL import Image, ImageDraw

    group = _open_store(cfg.store)
    _refuse_foreign_out(cfg.out)
    status = read_status(group)
    shown = np.flatnonzero(status == ItemStatus.DONE)[: cfg.n]
    if shown.size == 0:
        raise PreviewError(f"{cfg.store}: no finished items to show; run simulate-drr first")
    views = group.attrs["layout"]["views"]
    ids, labels, images = group["ids"], group["labels"], group["images"]

    chars_per_line = max(10, cfg.thumb * len(views) // 6)
    text_lines = 4
    cell_w = cfg.thumb * len(views) + 8
    cell_h = cfg.thumb + TEXT_LINE * (1 + text_lines) + 8
    cols = min(cfg.columns, len(shown))
    rows = -(-len(shown) // cols)
    sheet = Image.new("L", (cols * cell_w, rows * cell_h), color=255)
    draw = ImageDraw.Draw(sheet)
    for n, i in enumerate(shown):
        x, y = (n % cols) * cell_w + 4, (n // cols) * cell_h + 4
        draw.text((x, y), f"{ids[i]}  ({', '.join(views)})", fill=0)
        item = images[int(i)]
        for v in range(len(views)):
            sheet.paste(_thumbnail(item[v], cfg.thumb), (x + v * cfg.thumb, y + TEXT_LINE))
        positives = [CT_RATE_LABELS[k] for k, val in enumerate(labels[int(i)]) if val == 1]
        text = "; ".join(positives) if positives else "no positive labels"
        for k, line in enumerate(textwrap.wrap(text, chars_per_line)[:text_lines]):
            draw.text((x, y + TEXT_LINE + cfg.thumb + 2 + k * TEXT_LINE), line, fill=0)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(cfg.out)) as tmp:
        sheet.save(tmp, format="PNG")
    return len(shown)


class PreviewError(PipelineError):
    """The store cannot be shown or the sheet cannot be written where asked."""


def _open_store(path: Path) -> zarr.Group:
    try:
        group = zarr.open_group(str(path), mode="r")
        _ = group["status"], group.attrs["layout"]  # the parts a contact sheet needs
    except Exception:  # zarr raises several types for a folder or file that is not a store
        raise PreviewError(f"{path} is not a simulate-drr store; give the --out of a simulate-drr run") from None
    return group


def _refuse_foreign_out(out: Path) -> None:
    """The sheet replaces only a PNG (an earlier sheet), never another kind of file."""
    if not (out.exists() or out.is_symlink()):
        return
    with contextlib.suppress(OSError):
        if out.is_file():
            with out.open("rb") as f:
                if f.read(8) == PNG_SIGNATURE:
                    return
    raise PreviewError(f"{out} exists and is not a PNG image; it is left as it is: choose another --out")
