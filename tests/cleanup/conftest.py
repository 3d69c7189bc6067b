"""The cleanup tests' base: ten profiles, five of them stale, one for each rule."""

from __future__ import annotations

import pytest

from tests.cleanup.support import stale_base


@pytest.fixture
def base(engine, cfg):
    """Ten profiles; five of them stale, one for each rule (and one stale by two)."""
    return stale_base(engine, cfg)
