"""Real-browser test of shared mode with OpenID Connect sign-in (issue #15): a real OpenID
Connect provider (oidc-provider-mock) and ``streamlit run app.py`` in shared mode, both on
loopback, driven by Playwright with Debian's Chromium. Two users in two browser contexts: Alice
uploads private images and starts training (a second run waits in the job queue with its
position shown); Bob never sees her study, run or images, his crafted URLs for her study and run
are refused with a plain message, and his upload over the storage quota is refused with nothing
written; after Alice signs out, her study's URL shows only the sign-in screen. The audit log
records the sign-ins, uploads, trainings and the sign-out.

Skipped when /usr/bin/chromium (or playwright, or oidc-provider-mock) is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve import CHROMIUM, REPO, free_port, launch_chromium, stop_process, wait_http, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480)]

USERS = {
    "alice": {"email": "alice@school.test", "email_verified": True, "name": "Alice Example"},
    "bob": {"email": "bob@school.test", "email_verified": True, "name": "Bob Example"},
}


@contextlib.contextmanager
def _process(argv: list[str], env: dict, log: Path, health: str) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_http(health, proc)
            yield
        finally:
            stop_process(proc)


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    """(base URL, MDCM_HOME) of the app in shared mode behind a loopback OpenID provider."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("oidc_provider_mock")
    tmp = tmp_path_factory.mktemp("shared")
    home = tmp / "home"
    op_port, app_port = free_port(), free_port()
    op = f"http://127.0.0.1:{op_port}"
    url = f"http://127.0.0.1:{app_port}"
    secrets = tmp / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "{url}/oauth2callback"\n'
        f'cookie_secret = "{os.urandom(24).hex()}"\n'
        'client_id = "mdcm-test"\n'
        'client_secret = "mdcm-test-secret"\n'
        f'server_metadata_url = "{op}/.well-known/openid-configuration"\n'
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", AUTHLIB_INSECURE_TRANSPORT="1")
    op_argv = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1"]
    op_argv += ["--port", str(op_port)]
    for sub, claims in USERS.items():
        op_argv += ["--user-claims", json.dumps({"sub": sub, **claims})]
    app_env = dict(
        env,
        MDCM_HOME=str(home),
        MDCM_SHARED="1",  # loopback here; a network address would switch it on by itself
        MDCM_QUOTA_MB="40",
        MDCM_JOBS_PER_USER="1",
        PYTHONPATH=str(REPO),
    )
    app_argv = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port"]
    app_argv += [str(app_port), "--secrets.files", str(secrets)]
    with (
        _process(op_argv, env, tmp / "oidc.log", f"{op}/.well-known/openid-configuration"),
        _process(app_argv, app_env, tmp / "streamlit.log", f"{url}/_stcore/health"),
    ):
        yield url, home
        _kill_runs(home)


def _kill_runs(home: Path) -> None:
    """End the training processes this test's app started (by the pid in their run.json)."""
    for rj in home.glob("users/*/runs/*/run.json"):
        with contextlib.suppress(OSError, ValueError, ProcessLookupError, TypeError):
            pid = json.loads(rj.read_text()).get("pid")
            if pid:
                os.kill(int(pid), signal.SIGKILL)


def _zip_of_images(rows: int = 12) -> bytes:
    """A dataset folder for the colored-digits graph (D -> I -> A) with magenta 14x14 images."""
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        lines = ["D,I,A"]
        for i in range(rows):
            png = io.BytesIO()
            Image.new("RGB", (14, 14), (255, 0, 255)).save(png, format="PNG")
            z.writestr(f"secret/images/{i}.png", png.getvalue())
            lines.append(f"{i % 3},images/{i}.png,{i % 2}")
        z.writestr("secret/data.csv", "\n".join(lines) + "\n")
    return buf.getvalue()


def _zip_over_quota() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big/data.csv", b"0" * 60_000_000)  # 60 MB unpacked, ~60 KB as sent
    return buf.getvalue()


def _sign_in(page, url: str, sub: str) -> None:
    page.goto(url)
    page.wait_for_selector(".st-key-auth_login_default button")
    assert page.locator("text=Current study").count() == 0
    page.locator(".st-key-auth_login_default button").click()
    page.wait_for_selector(f"button[name='sub'][value='{sub}']")  # the provider's own page
    assert page.url.startswith(url.replace(url.rsplit(":", 1)[1], "")) or "oauth2" in page.url
    page.locator(f"button[name='sub'][value='{sub}']").click()
    page.wait_for_selector(f"text=Signed in as {USERS[sub]['name']}", timeout=60_000)
    wait_idle(page)


def _nav(page, label: str) -> None:
    page.get_by_role("link", name=label, exact=True).first.click()
    wait_idle(page)


def _query(page, key: str) -> str:
    m = re.search(rf"[?&]{key}=([A-Za-z0-9_-]+)", page.url)
    assert m, f"no {key}= in {page.url}"
    return m.group(1)


def _image_sources(page) -> set[str]:
    return set(
        page.locator("[data-testid='stImage'] img").evaluate_all("els => els.map(e => e.src)")
    )


def _upload(page, tmp_path: Path, name: str, data: bytes) -> None:
    _nav(page, "Data")
    page.get_by_role("tab", name="Upload").click()
    path = tmp_path / f"{name}.zip"
    path.write_bytes(data)
    page.locator(".st-key-data_zip input[type='file']").set_input_files(str(path))
    wait_idle(page)
    box = page.locator(".st-key-data_name input")
    box.fill(name)
    box.press("Enter")
    wait_idle(page)
    page.locator(".st-key-data_import button").click()
    wait_idle(page)


def _set_number(page, key: str, value: int) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def test_two_users_sign_in_and_never_see_each_other(shared_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, home = shared_app
    with sync_playwright() as p:
        browser = launch_chromium(p)
        a_ctx = browser.new_context(viewport={"width": 1400, "height": 1600})
        b_ctx = browser.new_context(viewport={"width": 1400, "height": 1600})
        alice, bob = a_ctx.new_page(), b_ctx.new_page()
        for page in (alice, bob):
            page.set_default_timeout(60_000)
        try:
            _flow(alice, bob, url, home, tmp_path)
        except Exception:
            for who, page in (("alice", alice), ("bob", bob)):
                shot = tmp_path / f"failure-{who}.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failure: {shot}")
            raise
        finally:
            browser.close()


def _flow(alice, bob, url: str, home: Path, tmp_path: Path) -> None:
    # -- Alice signs in at the provider; her first visit opens the default built-in study
    _sign_in(alice, url, "alice")
    alice.wait_for_selector("text=Current study")
    a_sid = _query(alice, "study")
    [a_key] = [p.name for p in (home / "users").iterdir()]
    assert (home / "users" / a_key / "studies" / a_sid / "app.json").is_file()

    # -- her private images: an upload, shown as image grids on the Data page
    _upload(alice, tmp_path, "secret", _zip_of_images())
    alice.wait_for_selector("text=Added dataset 'secret'", state="attached")
    alice.get_by_role("tab", name="Explore").click()
    alice.locator(".st-key-data_view").click()
    alice.get_by_role("option", name="secret", exact=True).click()
    wait_idle(alice)
    a_images = _image_sources(alice)
    assert a_images, "Alice's uploaded images are not shown"

    # -- she trains; a second run waits in the queue (one run per person at a time)
    _nav(alice, "Train")
    _set_number(alice, "train_steps", 5)
    alice.locator(".st-key-train_start button").click()
    alice.get_by_role("heading", name="Progress", exact=True).wait_for()
    wait_idle(alice)
    a_run1 = _query(alice, "run")
    alice.locator(".st-key-train_start button").click()
    alice.wait_for_selector("text=/Waiting in the training queue: position 1 of 1/")
    a_run2 = _query(alice, "run")
    assert a_run2 != a_run1

    # -- Bob signs in in another browser context: his own folder, nothing of Alice's
    _sign_in(bob, url, "bob")
    bob.wait_for_selector("text=Current study")
    b_sid = _query(bob, "study")
    b_key = next(p.name for p in (home / "users").iterdir() if p.name != a_key)
    assert b_sid != a_sid
    for label in ("Home", "Data", "Train", "Workspace"):
        _nav(bob, label)
        html = bob.content()
        for secret in (a_sid, a_run1, a_run2, "secret"):
            assert secret not in html, f"Bob's {label} page shows {secret}"
        assert not _image_sources(bob) & a_images, f"Bob's {label} page shows Alice's images"

    # -- Bob crafts URLs with Alice's ids: plain refusals
    bob.goto(f"{url}/?study={a_sid}")
    bob.wait_for_selector(f"text=Study '{a_sid}' is not in your workspace")
    assert bob.locator("text=Current study").count() == 0
    bob.goto(f"{url}/train?study={b_sid}&run={a_run1}")
    bob.wait_for_selector(f"text=Run '{a_run1}' is not one of this study's runs in your workspace")
    assert bob.get_by_role("heading", name="Progress", exact=True).count() == 0
    bob.goto(f"{url}/data?study={a_sid}")
    bob.wait_for_selector("text=is not in your workspace")
    assert not _image_sources(bob) & a_images

    # -- Bob's upload over the storage quota is refused; nothing is written
    bob.goto(f"{url}/?study={b_sid}")
    wait_idle(bob)
    _upload(bob, tmp_path, "big", _zip_over_quota())
    bob.wait_for_selector("text=/Upload refused: .*storage quota/", state="attached")
    assert not list((home / "users" / b_key / "studies" / b_sid / "uploads").iterdir())

    # -- Alice signs out (through the provider's end-session page): her URLs show only sign-in
    alice.goto(f"{url}/?study={a_sid}")
    alice.wait_for_selector("text=Current study")
    alice.locator(".st-key-auth_logout button").click()
    # the provider may show its own end-session page first (the app and the provider both
    # live on 127.0.0.1, so the URL alone cannot tell): wait for that page or the sign-in
    end_session = alice.get_by_role("button", name="End session")
    sign_in = alice.locator(".st-key-auth_login_default button")
    end_session.or_(sign_in).first.wait_for()
    if end_session.count():
        end_session.click()
    sign_in.wait_for()
    for path in (f"/?study={a_sid}", f"/train?study={a_sid}&run={a_run1}", "/workspace"):
        alice.goto(url + path)
        alice.wait_for_selector(".st-key-auth_login_default button")
        wait_idle(alice)
        html = alice.content()
        assert "Current study" not in html and "secret" not in html and a_run1 not in html
        assert not _image_sources(alice) & a_images

    # -- the audit log
    events = [(r["event"], r["user"]) for r in _audit(home)]
    for ev in (
        ("login", "alice@school.test"),
        ("login", "bob@school.test"),
        ("upload", "alice@school.test"),
        ("train", "alice@school.test"),
        ("upload_refused", "bob@school.test"),
        ("logout", "alice@school.test"),
    ):
        assert ev in events, ev


def _audit(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]


def test_local_accounts_sign_in_and_out_in_a_real_browser(tmp_path):
    """streamlit-authenticator's form, bcrypt check and re-login cookie in Chromium: a wrong
    password is refused, the right one opens the user's own workspace, a reload keeps the user
    signed in (the signed cookie), and signing out ends access."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from streamlit_authenticator.utilities.hasher import Hasher

    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(
        json.dumps(
            {
                "credentials": {
                    "usernames": {
                        "carol": {"name": "Carol", "email": "carol@school.test",
                                  "password": Hasher.hash("carol-pw-5521")},
                    }
                },
                "cookie": {"name": "mdcm_login", "key": os.urandom(24).hex(), "expiry_days": 1},
            }
        )
    )  # fmt: skip
    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ, MDCM_HOME=str(home), MDCM_SHARED="1", MDCM_ACCOUNTS=str(accounts),
        PYTHONPATH=str(REPO),
    )  # fmt: skip
    argv = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    with (
        _process(argv, env, tmp_path / "streamlit.log", f"{url}/_stcore/health"),
        sync_api.sync_playwright() as p,
    ):
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            page.wait_for_selector("text=Sign in to reach your own studies")
            user, pw = page.locator("input[type='text']"), page.locator("input[type='password']")
            user.fill("carol")
            pw.fill("wrong")
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("text=Wrong user name or password")
            assert not (home / "users").exists()
            pw.fill("carol-pw-5521")
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("text=Signed in as Carol")
            page.wait_for_selector("text=Current study")
            sid = _query(page, "study")
            [key] = [d.name for d in (home / "users").iterdir()]
            assert (home / "users" / key / "studies" / sid / "app.json").is_file()
            page.reload()  # a new session: the signed re-login cookie signs her in again
            page.wait_for_selector("text=Signed in as Carol")
            page.locator(".st-key-auth_logout button").click()
            page.wait_for_selector("text=Sign in to reach your own studies")
            page.goto(f"{url}/?study={sid}")
            page.wait_for_selector("text=Sign in to reach your own studies")
            wait_idle(page)
            assert page.locator("text=Current study").count() == 0
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()
    events = [r["event"] for r in _audit(home)]
    assert events.count("login") >= 2 and "logout" in events
