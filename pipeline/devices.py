"""``--device`` of every command (auto, cpu or cuda), resolved in one place.

``--device cuda`` on a machine where torch sees no GPU would fail every item (or crash deep inside
torch): each command calls :func:`refuse_missing_gpu` before it starts any work, so the refusal
is one line and exit 2, and nothing is written.
"""

from __future__ import annotations

from schemas.errors import PipelineError


class DeviceError(PipelineError, RuntimeError):
    """The requested device is not available here."""


def refuse_missing_gpu(device: str) -> None:
    """Refuse ``--device cuda`` (or ``cuda:N``) when torch sees no CUDA GPU on this machine."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda but torch sees no CUDA GPU on this machine; use --device cpu or auto")


def resolve_device(device: str):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is refused (:class:`DeviceError`)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    refuse_missing_gpu(device)
    return torch.device(device)
