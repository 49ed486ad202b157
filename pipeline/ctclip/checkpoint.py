"""Load and save CT-CLIP weights: strict key matching, ``torch.load(weights_only=True)``, clear errors.

A checkpoint is a plain state dict, as the official ``CTCLIP.load`` expects
(``CT-CLIP_v2.pt``). Keys must match the model exactly, except:

* ``ALLOWED_EXTRA_KEYS``: buffers older transformers versions saved and newer ones
  rebuild themselves (``text_transformer.embeddings.position_ids``); read and ignored.
* A checkpoint holding only the image part (``visual_transformer.*``,
  ``to_visual_latent*``) or only the text part (``text_transformer.*``,
  ``to_text_latent*``) loads for encode-only use; the absent part is filled with
  NaN and its encode method refuses to run. ``temperature`` is required only
  when both parts are present.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.runtime import atomic_path
from schemas.ctclip import CTCLIPConfig
from schemas.errors import PipelineError
from schemas.provenance import file_sha256

ALLOWED_EXTRA_KEYS = frozenset(
    {
        "text_transformer.embeddings.position_ids",
        "text_transformer.embeddings.token_type_ids",
    }
)
PART_PREFIXES = {
    "visual": ("visual_transformer.", "to_visual_latent."),
    "text": ("text_transformer.", "to_text_latent."),
}
SHARED_KEYS = ("temperature",)
_LIST_AT_MOST = 15


class CheckpointError(PipelineError, ValueError):
    """A checkpoint file cannot be used; the message names the file and what is wrong."""


def part_of(key: str) -> str:
    for part, prefixes in PART_PREFIXES.items():
        # 'to_visual_latent_extra.weight' belongs to the visual part, like 'to_visual_latent.weight'.
        if key.startswith(prefixes) or any(key.startswith(p.rstrip(".") + "_") for p in prefixes[1:]):
            return part
    return "shared"


def read_state_dict(path: str | Path, map_location="cpu") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (weights_only), or a CheckpointError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; give the path of CT-CLIP_v2.pt (CT-RATE models/)")
    try:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # torch raises several types for truncated, foreign or pickled-object files
        raise CheckpointError(
            f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {first_line(e)}). "
            "The file may be truncated (compare its size and sha256 with the download) or not a torch.save file."
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (a dict of name -> tensor), got {type(obj).__name__}")
    check_finite_weights(path, obj)
    return obj


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, short enough for a one-line error."""
    lines = str(e).strip().splitlines()  # an empty file raises with an empty message
    return lines[0][:200] if lines else "no message"


DOWNLOAD_FIX = "the file is damaged or was saved from a diverged run: compare its sha256 with the download"


def check_finite_weights(path: Path, state: dict[str, torch.Tensor], fix: str = DOWNLOAD_FIX) -> None:
    """Refuse NaN or infinite weights: they pass a strict key check and would give NaN latents for every input.
    ``fix``: what the user can do, the end of the one-line error.

    A tensor's sum is finite whenever all its values are (unless it overflows, rare for weights: then
    the exact test decides), and it costs about 1/25 of ``isfinite().all()``: 0.1 s against 2.5 s per
    110M float32 values on one loaded core, which matters for the 440M-parameter checkpoint."""

    def finite(v: torch.Tensor) -> bool:
        return bool(torch.isfinite(v.sum())) or bool(torch.isfinite(v).all())

    bad = [k for k, v in state.items() if v.is_floating_point() and v.numel() and not finite(v)]
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({listed}); {fix}")


def expected_shapes(cfg: CTCLIPConfig | str = "official") -> dict[str, tuple[int, ...]]:
    """Key -> shape of the model's state dict, built on the meta device (no memory, no init time)."""
    from pipeline.ctclip.model import CTCLIP

    with torch.device("meta"):
        model = CTCLIP(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_keys(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> dict:
    """Which parts are present and what is missing, unexpected or of the wrong shape."""
    keys = set(state) - ALLOWED_EXTRA_KEYS
    parts = {part_of(k) for k in keys} - {"shared"}
    needed = {k for k in expected if part_of(k) in parts or (part_of(k) == "shared" and parts == {"visual", "text"})}
    return {
        "parts": sorted(parts),
        "missing": sorted(needed - keys),
        "unexpected": sorted(keys - set(expected)),
        "shape_mismatch": sorted(
            (k, tuple(state[k].shape), expected[k])
            for k in keys & set(expected)
            if tuple(state[k].shape) != expected[k]
        ),
        "allowed_extra": sorted(set(state) & ALLOWED_EXTRA_KEYS),
    }


def _listing(title: str, items: list) -> str:
    more = f"\n    ... and {len(items) - _LIST_AT_MOST} more" if len(items) > _LIST_AT_MOST else ""
    return f"\n  {title} ({len(items)}):" + "".join(f"\n    {i}" for i in items[:_LIST_AT_MOST]) + more


def check_keys(path: Path, report: dict, cfg: CTCLIPConfig) -> None:
    if not report["parts"]:
        raise CheckpointError(f"{path}: holds no CT-CLIP weights (no visual_transformer.* or text_transformer.* keys)")
    problems = ""
    if report["missing"]:
        problems += _listing("missing keys", report["missing"])
    if report["unexpected"]:
        problems += _listing("unexpected keys", report["unexpected"])
    if report["shape_mismatch"]:
        problems += _listing("shape mismatches (key, in file, expected)", report["shape_mismatch"])
    if problems:
        raise CheckpointError(
            f"{path}: does not match the CT-CLIP config '{cfg.name}':{problems}\n"
            "Check that the file is a CT-CLIP (v2) state dict and that the config matches the model that saved it."
        )


def load_ctclip(path: str | Path, cfg: CTCLIPConfig | str = "official", map_location="cpu"):
    """A frozen CTCLIP in eval mode with the weights of ``path`` (strict; see the module docstring)."""
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.model import CTCLIP, build_text_encoder

    cfg = get_config(cfg)
    path = Path(path)
    state = read_state_dict(path, map_location="cpu")
    report = compare_keys(state, expected_shapes(cfg))
    check_keys(path, report, cfg)
    with torch.device("meta"):  # no random init of 440M parameters that are overwritten next
        model = CTCLIP(cfg)
    # BERT rebuilds non-persistent buffers (position ids) at construction, so it is built for real.
    model.text_transformer = build_text_encoder(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in ALLOWED_EXTRA_KEYS}
    model.load_state_dict(state, strict=False, assign=True)
    _fill_absent(model)
    model.loaded_parts = frozenset(report["parts"])
    model.requires_grad_(False)
    return model.to(map_location).eval()


def _fill_absent(model: torch.nn.Module) -> None:
    """Tensors still on the meta device (the part absent from the file) become NaN, so misuse is loud."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(module, name, torch.nn.Parameter(torch.full(p.shape, float("nan")), requires_grad=False))
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_meta:
                module.register_buffer(
                    name,
                    torch.full(b.shape, float("nan")) if b.is_floating_point() else torch.zeros(b.shape, dtype=b.dtype),
                )


def save_ctclip(model: torch.nn.Module, path: str | Path) -> str:
    """Write the state dict (atomically: temporary file, then rename); returns its sha256."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return file_sha256(path)
