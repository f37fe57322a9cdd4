"""Real-browser tests of reuse and export (issue #14) on the built-in colored-digits study, one
app server for the whole module: a short first training run; a second run that reuses the
first run's image mechanism (the stage shows as filled, and the run trains only the other
stage); then the interventional samples of the model saved as a dataset, into the study (the
Data page lists it as the experiment) and as a zip download that mdcm.data.load_study reads back
as that regime. Skipped without Debian's Chromium or playwright.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from serve import CHROMIUM, choose, launch_chromium, streamlit_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

TRAIN_WAIT_MS = 400_000


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    home = tmp_path_factory.mktemp("mdcm_home")
    with streamlit_server(home, log=home / "streamlit.log") as url, sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("text=Current study: Colored digits")  # the default study
        yield page, home
        browser.close()


def _nav(page, label: str) -> None:
    page.get_by_role("link", name=label, exact=True).first.click()
    wait_idle(page)


def _fill(page, key: str, value) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def _train(page, home: Path) -> str:
    """Start a short run from the Train page and wait for its end; returns its run id."""
    _fill(page, "train_steps", 20)
    if not page.locator(".st-key-train_coder_steps input").is_visible():
        page.get_by_text("Advanced").click()
    _fill(page, "train_coder_steps", 60)
    _fill(page, "train_check_samples", 512)
    before = set((home / "runs").iterdir()) if (home / "runs").is_dir() else set()
    page.locator(".st-key-train_start button").click()
    for _ in range(100):
        new = set((home / "runs").iterdir()) - before
        if new:
            break
        page.wait_for_timeout(300)
    (run,) = new
    page.wait_for_selector(f"text=Run {run.name}")
    page.wait_for_function(
        "rid => [...document.querySelectorAll('p, strong')].some(e => e.innerText.startsWith("
        "'Run ' + rid) && e.innerText.includes('done'))",
        arg=run.name,
        timeout=TRAIN_WAIT_MS,
    )
    page.wait_for_selector("text=Training finished")
    return run.name


def _events(home: Path, rid: str) -> list[dict]:
    lines = (home / "runs" / rid / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def _shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def test_reuse_the_image_mechanism_of_a_first_run(app, tmp_path):
    page, home = app
    try:
        _nav(page, "Train")
        page.wait_for_selector(".st-key-train_reuse_I")  # stage 0 (I given D) can be filled
        first = _train(page, home)
        # the second run: take I from the first run
        choose(
            page, "train_reuse_I", f"use I from run {first}", tries=20, exact=False, wait_ms=3000
        )
        page.wait_for_selector("text=filled, not trained")
        second = _train(page, home)
        assert second != first
        page.wait_for_selector(f"text=I: mechanism reused from run {first}")
        cfg = json.loads((home / "runs" / second / "run.json").read_text())["config"]
        assert cfg["pretrained"]["I"]["run"] == first
        events = _events(home, second)
        steps = {e["stage"] for e in events if e["kind"] in ("step", "check") and e["stage"] >= 0}
        assert steps == {1}  # only the other stage was trained
        assert not [e for e in events if e["kind"] == "coder"]  # the image code came along too
        filled = [e for e in events if e["kind"] == "stage_end" and e["stage"] == 0]
        assert filled and "pre-trained" in filled[0]["message"]
        assert page.locator("text=filled by a pre-trained mechanism").count() >= 1
        # the second model's image mechanism is the first one's, weight for weight
        import torch

        from mdcm.model import load_model

        a = load_model(home / "runs" / first / "model")
        b = load_model(home / "runs" / second / "model")
        for part in ("generators", "coders"):
            sa, sb = getattr(a, part)["I"].state_dict(), getattr(b, part)["I"].state_dict()
            assert all(torch.equal(v, sb[k]) for k, v in sa.items()), part
    except Exception:
        _shot(page, tmp_path, "reuse_failure")
        raise


def test_export_interventional_samples_and_read_them_back(app, tmp_path):
    from mdcm.data import load_study

    page, home = app
    try:
        _nav(page, "Intervene")
        export = page.get_by_text("Save these samples as a dataset")
        export.wait_for(timeout=180_000)  # the page draws its answer first (slow on 2 busy cores)
        export.click()
        _fill(page, "iv_export_n", 80)
        # as a zip download
        page.locator(".st-key-iv_export_where").get_by_text("as a zip download").click()
        wait_idle(page)
        _fill(page, "iv_export_name", "for_a_classifier")
        page.locator(".st-key-iv_export_go button").click()
        wait_idle(page)
        with page.expect_download() as dl:
            page.locator(".st-key-iv_export_download button").click()
        zpath = tmp_path / "samples.zip"
        dl.value.save_as(zpath)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp_path / "x")
        (ds,) = load_study(tmp_path / "x" / "for_a_classifier").datasets
        assert ds.n == 80 and set(ds.do) == {"D"}
        assert (ds.columns["D"] == ds.do["D"]).all()
        # into the study: the Data page lists it as an experiment on D
        page.locator(".st-key-iv_export_where").get_by_text("into this study").click()
        wait_idle(page)
        _fill(page, "iv_export_name", "sampled_do_D")
        page.locator(".st-key-iv_export_go button").click()
        page.wait_for_selector("text=Saved 80 samples as dataset 'sampled_do_D'")
        _nav(page, "Data")
        page.wait_for_selector("text=Delete uploaded dataset sampled_do_D")  # listed there
        sid = page.url.split("study=")[1].split("&")[0]
        study = load_study(home / "studies" / sid / "study")
        (mine,) = [d for d in study.datasets if d.name == "sampled_do_D"]
        assert mine.n == 80 and set(mine.do) == {"D"}
        assert page.locator("text=Something went wrong").count() == 0
    except Exception:
        _shot(page, tmp_path, "export_failure")
        raise
