"""Save a PNG screenshot of every page of the app to bench/out/screenshots/.

Starts ``streamlit run app.py`` on a free loopback port with a temporary MDCM_HOME, opens Debian's
Chromium through Playwright, opens the built-in colored-digits study, trains it briefly in the
background (through the Train page), then visits every page.

    python bench/screenshots.py [--steps 150] [--study colored_digits]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the Chromium tooling lives next to the browser tests

from serve import launch_chromium, streamlit_server, wait_idle  # noqa: E402

OUT = REPO / "bench" / "out" / "screenshots"
TITLES = {
    "colored_digits": "Colored digits",
    "xray": "Chest X-ray",
    "napkin": "Napkin",
    "backdoor": "Back-door",
    "bow": "Bow",
}


def shot(page, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    wait_idle(page)
    page.wait_for_timeout(1500)  # let iframes (pyvis) and plotly charts draw
    page.screenshot(path=str(path), full_page=True)
    print(f"saved {path.relative_to(REPO)}")
    return path


def _start_training(page, visit, steps: int) -> None:
    """On the Train page: set the steps per stage and start a run."""
    visit("Train", ".st-key-train_start")
    box = page.locator(".st-key-train_steps input")
    box.fill(str(steps))
    box.press("Enter")
    wait_idle(page)
    page.locator(".st-key-train_start button").click()


def _out_of_range_view(page, visit, home: Path) -> None:
    """The image as treatment, given a plain red photo: the out-of-range warning (#16)."""
    from PIL import Image

    visit("Intervene", "text=Answers")
    wait_idle(page)
    page.get_by_role("button", name="Remove class D", exact=True).click()
    wait_idle(page)
    page.locator(".st-key-iv_treat").click()
    page.get_by_role("option", name="image I", exact=True).click()
    page.keyboard.press("Escape")
    wait_idle(page)
    red = home / "red_photo.png"
    Image.new("RGB", (300, 200), (220, 20, 20)).save(red)
    page.locator(".st-key-iv_img_I input[type='file']").set_input_files(str(red))
    page.wait_for_selector("text=unlike every image in the training data", timeout=120_000)
    shot(page, "5c_intervene_out_of_range")


def _bow_view(page, url: str, visit, args) -> None:
    """A question the data cannot decide: the bow study, trained briefly, on Intervene."""
    page.goto(url)
    page.wait_for_selector(".st-key-home_open_example button", timeout=60_000)
    wait_idle(page)
    page.locator(".st-key-home_example").click()
    page.get_by_role("option", name=TITLES["bow"]).click()
    page.locator(".st-key-home_open_example button").click()
    page.wait_for_selector("text=Current study: Bow", timeout=60_000)
    _start_training(page, visit, args.steps)
    page.wait_for_selector("text=Training finished", timeout=int(args.timeout * 1000))
    wait_idle(page)
    visit("Intervene", "text=cannot decide")
    page.wait_for_selector("text=every number in this table is one of many answers")
    shot(page, "7_bow_intervene")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--study", default="colored_digits", choices=sorted(TITLES))
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for training")
    ap.add_argument("--home", default=None, help="MDCM_HOME to use (default: a temp folder)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    t0 = time.time()
    if args.home:
        Path(args.home).mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        streamlit_server(
            Path(args.home or tmp), log=Path(args.home or tmp) / "streamlit.log"
        ) as url,
        sync_playwright() as p,
    ):
        home = args.home or tmp
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        page.goto(url)
        page.wait_for_selector(".st-key-home_open_example button", timeout=60_000)
        page.locator(".st-key-home_example").click()
        page.get_by_role("option", name=TITLES[args.study]).click()
        page.locator(".st-key-home_open_example button").click()
        page.wait_for_selector("text=Current study", timeout=60_000)
        shot(page, "1_home")
        page.get_by_text("Add a trained model to this study").click()  # model bundle upload
        shot(page, "1b_home_bundle")

        def visit(label: str, wait_for: str) -> None:
            page.get_by_role("link", name=label, exact=True).first.click()
            page.wait_for_selector(wait_for, timeout=120_000)

        visit("Graph & plan", "text=Stage dependency graph")
        shot(page, "2_graph")
        visit("Data", "text=Pairwise")
        shot(page, "3_data")
        page.get_by_role("tab", name="Upload").click()
        shot(page, "3b_data_upload")
        _start_training(page, visit, args.steps)
        page.wait_for_selector("text=/stage 0: trains/", timeout=int(args.timeout * 1000))
        shot(page, "4a_train_running")
        try:
            page.wait_for_selector("text=Training finished", timeout=int(args.timeout * 1000))
        except Exception:
            shot(page, "4_train_timeout")
            for f in sorted(Path(home).glob("runs/*/*.log")):
                print(f, f.read_text()[-2000:])
            raise
        shot(page, "4b_train_done")
        page.locator(".st-key-train_reuse_I").click()  # reuse the image mechanism (#14)
        page.get_by_role("option", name="use I from run", exact=False).click()
        page.wait_for_selector("text=filled, not trained", timeout=60_000)
        shot(page, "4c_train_reuse")
        visit("Intervene", "text=Answers")
        page.locator(".stPlotlyChart").nth(1).wait_for(timeout=120_000)
        shot(page, "5_intervene")
        page.get_by_text("Save these samples as a dataset").click()
        page.locator(".st-key-iv_export_go button").click()
        page.wait_for_selector("text=/Saved .* samples as dataset/", timeout=120_000)
        shot(page, "5b_intervene_export")
        visit("Checks", "text=Each variable: data vs model")
        shot(page, "6_checks")
        if args.study == "colored_digits":
            _out_of_range_view(page, visit, Path(home))
        _bow_view(page, url, visit, args)
        browser.close()
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
