"""Start the app with ``streamlit run`` on a free loopback port and open Debian's Chromium with
Playwright; shared by ``tests/test_browser.py`` and ``bench/screenshots.py``. No Streamlit import
here (the app runs in a subprocess)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def streamlit_server(
    home: Path, port: int | None = None, timeout_s: float = 60.0, log: Path | None = None
) -> Iterator[str]:
    """Run ``streamlit run app.py`` with ``MDCM_HOME=home``; yields the base URL."""
    port = port or free_port()
    env = dict(os.environ, MDCM_HOME=str(home), PYTHONUNBUFFERED="1")
    # the served app behaves as for users: a page error shows "Something went wrong" (which the
    # browser tests look for), not the re-raise that MDCM_RAISE gives AppTests
    env.pop("MDCM_RAISE", None)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=str(REPO),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_stcore/health", proc, timeout_s)
        yield url
    finally:
        stop_process(proc)
        if log:
            out.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate a server started here; kill it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers 200; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered on {url} in {timeout_s} s")
        time.sleep(0.3)


def launch_chromium(playwright):
    """Debian's Chromium through Playwright (Playwright's own download is not used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the app stops running (no 'running' status widget) and the page settled."""
    page.wait_for_timeout(300)
    with contextlib.suppress(Exception):
        page.wait_for_selector(
            '[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms
        )
    page.wait_for_timeout(300)


def choose(
    page, key: str, option: str, tries: int = 5, exact: bool = True, wait_ms: int = 10_000
) -> None:
    """Pick ``option`` in the select box ``.st-key-<key>``. A rerun that lands between the
    click and the pick (the canvas component reporting its size, a fragment finishing) closes
    the list again (and a select box may still be waiting for data), so open it until the
    option shows, a few times."""
    box = page.locator(f".st-key-{key}")
    item = page.get_by_role("option", name=option, exact=exact).first
    for attempt in range(tries):
        wait_idle(page)
        box.click()
        try:
            item.wait_for(timeout=wait_ms)
            item.click()
            wait_idle(page)
            return
        except Exception:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
