"""Fixtures shared by the test modules. Shared helpers live in helpers.py; this file is never imported."""

from pathlib import Path

import pytest
from helpers import copy_project


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")
