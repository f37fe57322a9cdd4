"""How fast the Intervene page answers in a real browser: slider moves and treatment switches.

Starts ``streamlit run app.py`` on a free loopback port with a temporary MDCM_HOME, creates the
built-in studies with one model each (the default architecture with untrained weights: sampling
costs the same as with trained ones), opens Debian's Chromium through Playwright and measures,
from the user's action until the page has finished its rerun (the new answer sentence is shown,
no element is stale and the app is no longer running):

* slider: moving the treatment's slider to the next value and back (``--repeats`` times);
* switch: choosing another treatment in the Treatment box (after removing the current one), until
  its answers are shown, then back (the first switch to a variable draws all its values; later
  ones find them drawn).

    python bench/ui_latency.py [--repeats 5] [--studies xray,colored_digits,napkin,bow]

Prints one line per action and a table: the time in the browser (median, max) and the server's
share (the page runs' own time, logged with ``MDCM_TIMING=1``). Targets (issue #16): a slider
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


LOG: dict[str, Path] = {}  # the server's log (page-run times, MDCM_TIMING=1)


def _log_mark() -> int:
    return LOG["path"].stat().st_size


def _runs_since(mark: int) -> list[float]:
    """Durations of the app's page runs that ended since ``mark`` (a log offset)."""
    return [d for _, d in _run_records(mark)]


def _run_records(mark: int) -> list[tuple[float, float]]:
    """(wall-clock end, duration) of the page runs that ended since ``mark``."""
    with LOG["path"].open("rb") as fh:
        fh.seek(mark)
        text = fh.read().decode(errors="replace")
    out = []
    for ln in text.splitlines():
        if "mdcm-timing page-run" in ln:
            end, took = ln.split()[-2:]
            out.append((float(end), float(took)))
    return out


def _wait(page, needle: str, t0: float, mark: int, timeout_s: float = 120.0) -> float:
    """Seconds from ``t0`` until the page shows ``needle``, nothing on it is stale or running,
    and the app has logged the end of a page run since ``mark`` (elements stream in while a run
    goes on, so the text alone can appear before the run is over)."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.wait_for_function(DONE_JS, arg=[needle], timeout=timeout_s * 1000, polling=50)
        if _runs_since(mark):
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise TimeoutError(f"no page run ended within {timeout_s} s")
        time.sleep(0.02)


def _label(schema, v: str) -> str:
    from mdcm.explain import var_name

    return var_name(schema[v])


def _switch_needle(schema, target: str, y: str) -> str:
    if schema[target].kind == "image":
        return f"{_label(schema, y)} if {_label(schema, target)} were replaced"
    return f"If {_label(schema, target)} were set to"


def _measure_study(page, url: str, name: str, sid: str, repeats: int) -> list[tuple]:
    """(study, action, browser seconds, server seconds) rows for one study."""
    from mdcm_app import state

    schema = state.load_meta(sid).schema()
    t, other, y = STUDIES[name]
    rows = []
    mark = _log_mark()
    page.goto(f"{url}/?study={sid}")
    _wait(page, "Current study", time.monotonic(), mark, 300)  # Home has opened the study
    time.sleep(1.0)  # let Home's run settle
    mark = _log_mark()
    t0 = time.monotonic()
    page.get_by_role("link", name="Intervene", exact=True).first.click()
    first = _wait(page, f"If {_label(schema, t)} were set to 0", t0, mark, 300)
    rows.append((name, "first visit (page load)", [first], [sum(_runs_since(mark))]))
    print(f"{name}: first visit {first:.2f} s", flush=True)
    slider = page.locator(f".st-key-iv_val_{t} input[type='range']")
    times, server = [], []
    value = 0
    for i in range(2 * repeats):
        key = "ArrowRight" if i % 2 == 0 else "ArrowLeft"
        value += 1 if key == "ArrowRight" else -1
        slider.focus()
        mark = _log_mark()
        t0, wall = time.monotonic(), time.time()
        slider.press(key)
        times.append(_wait(page, f"If {_label(schema, t)} were set to {value}", t0, mark))
        server.append(sum(_runs_since(mark)))
        if os.environ.get("UI_LATENCY_DEBUG"):
            end, took = _run_records(mark)[-1]
            print(
                f"   press -> run start {end - took - wall:.2f} s, run {took:.2f} s, "
                f"run end -> done {wall + times[-1] - end:.2f} s"
            )
    rows.append((name, f"slider move {t}", times, server))
    print(f"{name}: slider {[round(x, 2) for x in times]} (server {[round(x, 2) for x in server]})")
    if other == y:  # bow: the only other variable is the outcome
        return rows
    switches = []
    current = t
    for i in range(max(2, 2 * repeats)):
        target = other if current == t else t
        mark = _log_mark()
        page.get_by_role("button", name=f"Remove {_label(schema, current)}", exact=True).click()
        _wait(page, "Pick at least one treatment", time.monotonic(), mark)
        page.locator(".st-key-iv_treat").click()
        option = page.get_by_role("option", name=_label(schema, target), exact=True)
        option.wait_for()
        mark = _log_mark()
        t0 = time.monotonic()  # from choosing the new treatment to its answers
        option.click()
        took = _wait(page, _switch_needle(schema, target, y), t0, mark)
        page.keyboard.press("Escape")
        switches.append((i < 2, took, sum(_runs_since(mark))))
        current = target
    for label, first_time in (("first time", True), ("again", False)):
        got = [(a, b) for f, a, b in switches if f is first_time]
        if got:
            rows.append(
                (name, f"switch {t} <-> {other}, {label}", [a for a, _ in got], [b for _, b in got])
            )
    print(f"{name}: switch {[round(s, 2) for _, s, _ in switches]}", flush=True)
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
        os.environ["MDCM_TIMING"] = "1"  # the server logs each page run's duration
        LOG["path"] = home / "streamlit.log"
        with (
            streamlit_server(home, log=home / "streamlit.log") as url,
            sync_playwright() as p,
        ):
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(120_000)
            rows = []
            for name in names:
                try:
                    rows += _measure_study(page, url, name, sids[name], args.repeats)
                except Exception as exc:  # noqa: BLE001 - report the failure, measure the rest
                    shot = REPO / "bench" / "out" / f"ui_latency_{name}_failure.png"
                    shot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"{name}: FAILED ({type(exc).__name__}: {exc}); see {shot}", flush=True)
            browser.close()
    print()
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average (1 min) at the end: {load:.1f}")
    print("| study | action | n | browser median s | browser max s | server median s |")
    print("|---|---|---|---|---|---|")
    for name, action, times, server in rows:
        print(
            f"| {name} | {action} | {len(times)} | {statistics.median(times):.2f} | "
            f"{max(times):.2f} | {statistics.median(server):.2f} |"
        )


if __name__ == "__main__":
    main()
