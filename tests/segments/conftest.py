"""The segment tests' settings: the repository's crm.yaml with this test's database, landing and
segment folders."""

from __future__ import annotations

import pytest

from crm_tasks.settings import load_settings
from tests.conftest import REPO


@pytest.fixture
def seg_cfg(landing, db_url, tmp_path):
    folder = tmp_path / "segments"
    folder.mkdir()
    return load_settings(REPO / "crm.yaml", env={
        "CRM_LANDING_DIR": str(landing), "CRM_DATABASE_URL": db_url, "CRM_SEGMENTS_DIR": str(folder)})
