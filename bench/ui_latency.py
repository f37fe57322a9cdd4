"""How fast the Intervene page answers in a real browser: slider moves and treatment switches.

Starts ``streamlit run app.py`` on a free loopback port with a temporary MDCM_HOME, creates the
built-in studies with one model each (the default architecture with untrained weights: sampling
costs the same as with trained ones), opens Debian's Chromium through Playwright and measures,
from the user's action until the page has finished its rerun (the new answer sentence is shown,
no element is stale and the app is no longer running):

* slider: moving the treatment's slider to the next value and back (``--repeats`` times);
* switch: removing the treatment and choosing another one in the Treatment box, then back
  (the first switch to a variable draws all its values; later ones find them drawn).

    python bench/ui_latency.py [--repeats 5] [--studies xray,colored_digits,napkin,bow]

Prints one line per action and a table (median and max seconds). Targets (issue #16): a slider
move within 1 s, a treatment switch within 2 s, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the Chromium tooling lives next to the browser tests

from serve import launch_chromium, streamlit_server  # noqa: E402

#: study -> (treatment, other treatment for the switch, outcome)
STUDIES = {
    "xray": ("C", "X", "N"),
    "colored_digits": ("D", "I", "A"),
    "napkin": ("X", "Z", "Y"),
    "bow": ("X", "Y", "Y"),
}

DONE_JS = """([needle]) => {
  const body = document.body.innerText;
  if (!body.includes(needle)) return false;
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  return !document.querySelector('[data-stale="true"]');
}"""


def _prepare(home: Path, names: list[str]) -> dict[str, str]:
    """One study per built-in, each with a finished run holding a model (untrained weights)."""
    os.environ["MDCM_HOME"] = str(home)
    from test_app import _fake_trained_run

    from mdcm_app import state

    out = {}
    for name in names:
        sid = state.new_study(example=name).study_id
        _fake_trained_run(sid)
        out[name] = sid
    return out


def _wait(page, needle: str, t0: float, timeout_s: float = 120.0) -> float:
    page.wait_for_function(DONE_JS, arg=[needle], timeout=timeout_s * 1000, polling=50)
    return time.monotonic() - t0


def _label(schema, v: str) -> str:
    from mdcm.explain import var_name

    return var_name(schema[v])


def _switch_needle(schema, target: str, y: str) -> str:
    if schema[target].kind == "image":
        return f"{_label(schema, y)} if {_label(schema, target)} were replaced"
    return f"If {_label(schema, target)} were set to"


def _measure_study(page, url: str, name: str, sid: str, repeats: int) -> list[tuple]:
    from mdcm_app import state

    schema = state.load_meta(sid).schema()
    t, other, y = STUDIES[name]
    rows = []
    t0 = time.monotonic()
    page.goto(f"{url}/intervene?study={sid}")
    first = _wait(page, f"If {_label(schema, t)} were set to 0", t0, 300)
    rows.append((name, "first visit (page load)", [first]))
    print(f"{name}: first visit {first:.2f} s", flush=True)
    slider = page.locator(f".st-key-iv_val_{t} input[type='range']")
    times = []
    value = 0
    for i in range(2 * repeats):
        key = "ArrowRight" if i % 2 == 0 else "ArrowLeft"
        value += 1 if key == "ArrowRight" else -1
        slider.focus()
        t0 = time.monotonic()
        slider.press(key)
        times.append(_wait(page, f"If {_label(schema, t)} were set to {value}", t0))
    rows.append((name, f"slider move {t}", times))
    print(f"{name}: slider {[round(x, 2) for x in times]}", flush=True)
    if other == y:  # bow: the only other variable is the outcome
        return rows
    switches = []
    current = t
    for i in range(max(2, 2 * repeats)):
        target = other if current == t else t
        t0 = time.monotonic()
        page.get_by_role("button", name=f"Remove {_label(schema, current)}").click()
        page.wait_for_selector("text=Pick at least one treatment")
        page.locator(".st-key-iv_treat").click()
        page.get_by_role("option", name=_label(schema, target), exact=True).click()
        page.keyboard.press("Escape")
        switches.append((i < 2, _wait(page, _switch_needle(schema, target, y), t0)))
        current = target
    firsts = [s for f, s in switches if f]
    later = [s for f, s in switches if not f]
    rows.append((name, f"switch {t} <-> {other}, first time", firsts))
    if later:
        rows.append((name, f"switch {t} <-> {other}, again", later))
    print(f"{name}: switch {[round(s, 2) for _, s in switches]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--studies", default=",".join(STUDIES))
    args = ap.parse_args()
    names = [s for s in args.studies.split(",") if s]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        sids = _prepare(home, names)
        with (
            streamlit_server(home, log=home / "streamlit.log") as url,
            sync_playwright() as p,
        ):
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(120_000)
            rows = []
            for name in names:
                rows += _measure_study(page, url, name, sids[name], args.repeats)
            browser.close()
    print()
    print(f"| study | action | n | median s | max s |   (cores: {os.cpu_count()})")
    print("|---|---|---|---|---|")
    for name, action, times in rows:
        print(
            f"| {name} | {action} | {len(times)} | {statistics.median(times):.2f} | "
            f"{max(times):.2f} |"
        )


if __name__ == "__main__":
    main()
