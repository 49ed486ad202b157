"""Label prompts and projection visibility, read from ``data_manifests`` (see the JSON files for the reasons)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from schemas.embed import PROMPT_TEMPLATES
from schemas.labels import CT_RATE_LABELS

REPORT_VOCAB = "report_vocab"  # the per-label prompt ensemble's name beside the paper's template sets


@cache
def _load(name: str) -> dict:
    return json.loads(resources.files("data_manifests").joinpath(name).read_text("utf-8"))


def visibility() -> dict[str, tuple[bool, str]]:
    """label -> (visible in projection, why), in CT-RATE order."""
    table = _load("projection_visibility.json")["labels"]
    return {name: (bool(table[name][0]), str(table[name][1])) for name in CT_RATE_LABELS}


def visible_labels() -> list[str]:
    return [name for name, (seen, _) in visibility().items() if seen]


def prompt_sets() -> dict[str, dict[str, list[list[str]]]]:
    """set -> {"positive": per label a list of texts, "negative": ...}, in CT-RATE label order.

    The paper's template sets have one text per label; the report-vocabulary set an ensemble.
    """
    out: dict[str, dict[str, list[list[str]]]] = {}
    for name, (pos, neg) in PROMPT_TEMPLATES.items():
        out[name] = {
            "positive": [[pos.format(p=p)] for p in CT_RATE_LABELS],
            "negative": [[neg.format(p=p)] for p in CT_RATE_LABELS],
        }
    table = _load("label_prompts.json")["prompts"]
    out[REPORT_VOCAB] = {
        "positive": [list(table[p]["positive"]) for p in CT_RATE_LABELS],
        "negative": [list(table[p]["negative"]) for p in CT_RATE_LABELS],
    }
    return out
