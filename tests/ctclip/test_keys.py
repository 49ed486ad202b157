"""Our state dict has the official CT-CLIP key names and shapes (list made from the official module tree)."""

from __future__ import annotations

from pipeline.ctclip.checkpoint import expected_shapes
from tests.helpers.ctclip import official_keys


def test_official_config_keys_and_shapes_equal_the_official_module_tree():
    official = official_keys()
    ours = expected_shapes("official")
    assert len(official) == 361
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}


def test_official_parameter_count():
    import torch

    from pipeline.ctclip.model import CTCLIP

    with torch.device("meta"):
        model = CTCLIP("official")
    assert sum(p.numel() for p in model.parameters()) == 438_148_761


def test_tiny_config_uses_the_official_names():
    official = official_keys()
    tiny = expected_shapes("tiny")
    assert sorted(set(tiny) - set(official)) == []
    # the tiny model has one layer per stack: every official key outside layers 1+ exists in it
    import re

    first_layers = {k for k in official if not re.search(r"\.layers?\.[1-9]", k)}
    assert sorted(first_layers - set(tiny)) == []
