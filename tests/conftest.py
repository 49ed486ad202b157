"""Fixtures and markers shared by every package's tests.

Markers (registered in pyproject.toml): ``gpu`` tests are skipped where torch sees no CUDA
device; ``slow`` tests (over ~20 s) are left out of CI (``scripts/test.sh`` runs ``-m "not slow"``).
"""

from __future__ import annotations

import pytest

from tests.helpers.chain import Chain, build_chain


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Chain:
    """Every data stage run once through the command line (``tests/helpers/chain.py``); read-only."""
    return build_chain(tmp_path_factory.mktemp("chain"))
