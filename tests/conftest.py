"""Fixtures shared by every package's tests."""

from __future__ import annotations

import pytest

from tests.helpers.chain import Chain, build_chain


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Chain:
    """Every data stage run once through the command line (``tests/helpers/chain.py``); read-only."""
    return build_chain(tmp_path_factory.mktemp("chain"))
