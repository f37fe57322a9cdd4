"""Real-browser check of the Counterfactual page (issue #12), in Debian's Chromium through
Playwright: on the colored-digits study, ask "among the units with class D = 0, what would the
attribute have been had D been 1?", and see the ID* verdict, the chart with the counterfactual,
interventional and factual answers, and the factual/counterfactual image pairs.

Skipped when /usr/bin/chromium (or the playwright package) is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve import CHROMIUM, launch_chromium, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

DONE_JS = """([needle]) => document.body.innerText.includes(needle)
  && !document.querySelector('[data-testid="stStatusWidget"]')
  && !document.querySelector('[data-stale="true"]')"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    home = tmp_path_factory.mktemp("mdcm_home")
    old = os.environ.get("MDCM_HOME")
    os.environ["MDCM_HOME"] = str(home)
    try:
        from test_app import _fake_trained_run

        from mdcm_app import state

        sid = state.new_study(example="colored_digits").study_id
        _fake_trained_run(sid)
        with (
            streamlit_server(home, log=home / "streamlit.log") as url,
            sync_api.sync_playwright() as p,
        ):
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.set_default_timeout(120_000)
            yield page, url, sid
            browser.close()
    finally:
        if old is None:
            os.environ.pop("MDCM_HOME", None)
        else:
            os.environ["MDCM_HOME"] = old


def _settle(page, needle: str) -> None:
    page.wait_for_function(DONE_JS, arg=[needle], timeout=180_000, polling=100)


def test_one_counterfactual_question_in_a_real_browser(app, tmp_path):
    page, url, sid = app
    try:
        page.goto(f"{url}/?study={sid}")
        _settle(page, "Current study")
        page.get_by_role("link", name="Counterfactual", exact=True).first.click()
        _settle(page, "units kept of")
        # the question: had D been 1, for the units with D = 0 (evidence D = 0 is the default)
        page.locator(".st-key-cf_do_D").click()
        page.get_by_role("option", name="1", exact=True).click()
        _settle(page, "P(A_{D=1} | D=0)")
        _settle(page, "units kept of")
        body = page.inner_text("body")
        assert "Identifiable" in body and "P(A_{D=1} | D=0)" in body
        assert "Something went wrong" not in body
        assert page.locator('[data-testid="stException"]').count() == 0
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.wait_for(state="visible")
        legend = chart.inner_text()
        for name in ("counterfactual P(A_{D=1} | D=0)", "interventional P(A | do(D=1))", "factual"):
            assert name in legend, legend
        pairs = page.locator('[data-testid="stImage"] img')
        assert pairs.count() >= 1
        box = pairs.last.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
        assert "each pair is one unit" in body
    except Exception:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
        raise
