"""Real-browser test of the Graph page's canvas editor (issue #14): from an empty study, draw the
front-door graph ``C -> X -> N; C <-> N`` with clicks and drags only (typing only the three
names), see the text form follow and the two-stage plan appear, see a cycle refused next to the
canvas, move a variable and delete one. ``streamlit run app.py`` on a loopback port, Debian's
Chromium through Playwright; skipped when either is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from serve import CHROMIUM, launch_chromium, streamlit_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

#: where the three variables are put, in canvas units (graphview.CANVAS_W x CANVAS_H)
SPOTS = {"C": (110, 120), "X": (320, 270), "N": (530, 120)}


@pytest.fixture()
def page_url(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    home = tmp_path / "home"
    home.mkdir()
    with streamlit_server(home, log=home / "streamlit.log") as url, sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.set_default_timeout(60_000)
        try:
            yield page, url, home
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


class Canvas:
    """Pointer gestures on the canvas in its own units (the SVG scales with the page)."""

    def __init__(self, page):
        self.page = page
        self.board = page.locator(".mdcm-canvas svg.board")

    def at(self, x: float, y: float) -> tuple[float, float]:
        box = self.board.bounding_box()
        assert box is not None
        _, _, w, h = map(float, self.board.get_attribute("viewBox").split())
        return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h

    def click(self, x: float, y: float) -> None:
        self.page.mouse.click(*self.at(x, y))

    def drag(self, a: tuple[float, float], b: tuple[float, float], shift: bool = False) -> None:
        m = self.page.mouse
        m.move(*self.at(*a))
        if shift:
            self.page.keyboard.down("Shift")
        m.down()
        m.move(*self.at(*b), steps=12)
        m.up()
        if shift:
            self.page.keyboard.up("Shift")
        wait_idle(self.page)

    def add(self, name: str) -> None:
        self.click(*SPOTS[name])
        box = self.page.locator(".mdcm-canvas input.namebox")
        box.wait_for(state="visible")
        self.page.keyboard.type(name)
        self.page.keyboard.press("Enter")
        wait_idle(self.page)
        self.page.locator(f".mdcm-canvas [data-testid='node-{name}']").wait_for()


def _text(page) -> set[str]:
    raw = page.locator(".st-key-graph_text textarea").input_value()
    return {ln.strip() for ln in raw.splitlines() if ln.strip()}


def _stages(page) -> list[str]:
    return [t for t in page.locator("strong").all_inner_texts() if re.match(r"Stage \d+ \(", t)]


def test_draw_the_front_door_on_the_canvas(page_url):
    page, url, home = page_url
    page.goto(url)
    page.wait_for_selector("text=Current study: Colored digits")  # the default study, no click
    page.locator(".st-key-home_new_title input").fill("Front door by hand")
    page.locator(".st-key-home_new button").click()
    page.wait_for_selector("text=Current study: Front door by hand")
    page.get_by_role("link", name="Graph & plan", exact=True).first.click()
    page.wait_for_selector("text=Click anywhere to add a variable")
    canvas = Canvas(page)

    for name in ("C", "X", "N"):
        canvas.add(name)
    canvas.drag(SPOTS["C"], SPOTS["X"])
    page.locator(".mdcm-canvas [data-testid='edge-C->X']").wait_for()
    canvas.drag(SPOTS["X"], SPOTS["N"])
    page.locator(".mdcm-canvas [data-testid='edge-X->N']").wait_for()
    canvas.drag(SPOTS["C"], SPOTS["N"], shift=True)  # Shift: a hidden confounder
    page.locator(".mdcm-canvas [data-testid='edge-C<->N']").wait_for()
    page.wait_for_selector("text=Stage dependency graph")

    assert _text(page) == {"C -> X", "X -> N", "C <-> N"}
    stages = _stages(page)
    assert len(stages) == 2, stages
    body = " ".join(page.locator("[data-testid='stMarkdownContainer']").all_inner_texts())
    assert "Stage 0 (can start at once): trains X" in body
    assert "Stage 1 (after stage 0): trains C and N" in body
    assert page.locator(".mdcm-canvas .line.bi").count() == 1  # drawn dashed (class bi)
    dash = page.locator(".mdcm-canvas .line.bi").evaluate(
        "e => getComputedStyle(e).strokeDasharray"
    )
    assert dash not in ("", "none")

    # a cycle is refused next to the canvas and the graph stays as it was
    canvas.drag(SPOTS["N"], SPOTS["C"])
    page.wait_for_selector("text=/directed cycle/")
    assert _text(page) == {"C -> X", "X -> N", "C <-> N"}
    assert page.locator(".mdcm-canvas [data-testid='edge-N->C']").count() == 0

    # drag X to empty space: it moves, and the position is kept in the study
    canvas.drag(SPOTS["X"], (320, 330))
    sid = page.url.split("study=")[1].split("&")[0]
    meta = json.loads((home / "studies" / sid / "app.json").read_text())
    x, y = meta["positions"]["X"]
    assert abs(x - 320) < 3 and abs(y - 330) < 3, meta["positions"]
    assert _text(page) == {"C -> X", "X -> N", "C <-> N"}

    # select N and delete it with the keyboard: its edges go too
    canvas.click(*SPOTS["N"])
    page.locator(".mdcm-canvas .node.selected").wait_for()
    page.keyboard.press("Delete")
    wait_idle(page)
    page.wait_for_selector("text=removed variable")
    assert _text(page) == {"C -> X"}
    assert page.locator(".mdcm-canvas [data-testid='node-N']").count() == 0
    assert page.locator("text=Something went wrong").count() == 0
