"""AppTest tests of the issue-#14 controls outside the canvas: image thumbnails in the Data
preview, reusing a trained mechanism on the Train page, model bundles (download on Train and
Checks, upload on Home) and saving interventional samples as a dataset (Intervene). Each control
gets its happy path and a bad input."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    return tmp_path / "home"


def _page(name: str, study_id: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=TIMEOUT)
    at.session_state["study_id"] = study_id
    return at


def _study(example: str) -> str:
    from mdcm_app import state

    return state.new_study(example=example).study_id


def _texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


# ---------------------------------------------------------------------- Data preview
def test_data_preview_shows_image_thumbnails(home):
    at = _page("data", _study("colored_digits")).run()
    assert not at.exception and not at.error
    frame = at.dataframe[1].value  # [0] lists the datasets
    assert list(frame.columns) == ["D", "I", "A"]
    assert not any("mean pixel" in c for c in frame.columns)
    url = frame["I"].iloc[0]
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size[0] >= 28 and img.mode == "RGB"  # a 14x14 image, enlarged
    # the thumbnail shows the data's pixels (same picture, enlarged by a whole factor)
    from mdcm_app import ui

    first = np.asarray(ui.study_data(_meta(at))[0].datasets[0].columns["I"][0])
    k = img.size[0] // first.shape[-1]
    px = np.asarray(img)[::k, ::k].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    assert np.abs(px - first).max() < 0.02


def _meta(at: AppTest):
    from mdcm_app import state

    return state.load_meta(at.session_state["study_id"])
