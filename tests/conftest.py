"""Shared test setup.

* Page and callback errors propagate (``MDCM_RAISE=1``, see :func:`mdcm_app.ui.guard`), so an
  AppTest's ``at.exception`` shows an error raised inside a page instead of the friendly
  message the app shows its users.
* ``home``: a temporary ``MDCM_HOME`` (the app's studies, runs and uploads) with the repository
  as the working folder, for the app tests.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MDCM_RAISE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    return tmp_path / "home"
