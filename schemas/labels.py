"""The label vocabularies, read from the JSON files in ``data_manifests``."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _load(name: str) -> dict:
    return json.loads(resources.files("data_manifests").joinpath(name).read_text("utf-8"))


def ct_rate_labels() -> tuple[str, ...]:
    """The 18 CT-RATE abnormality labels in CT-RATE column order."""
    return tuple(_load("ct_rate_labels.json")["labels"])


def mimic_ct_labels() -> tuple[str, ...]:
    """The 11-label subset annotated in MIMIC-CT."""
    return tuple(_load("mimic_ct_labels.json")["labels"])


def radchest_mapping() -> dict[str, tuple[str, ...]]:
    """CT-RATE label -> RadChest-CT abnormality names that imply it."""
    return {k: tuple(v) for k, v in _load("radchest_ct_mapping.json")["mapping"].items()}


CT_RATE_LABELS: tuple[str, ...] = ct_rate_labels()
N_LABELS: int = len(CT_RATE_LABELS)


def check_label_values(v: list[int | None]) -> list[int | None]:
    """A row's labels: N_LABELS values in CT-RATE order, each 1, 0 or None (not annotated)."""
    if len(v) != N_LABELS:
        raise ValueError(f"expected {N_LABELS} labels in CT-RATE order, got {len(v)}")
    bad = [(CT_RATE_LABELS[i], x) for i, x in enumerate(v) if x not in (0, 1, None)]
    if bad:
        raise ValueError(f"labels must be 0, 1 or null; got {bad[:3]}")
    return v
