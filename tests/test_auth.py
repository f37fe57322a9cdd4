"""Sign-in and per-user isolation of the app (issue #15), with Streamlit's AppTest running the
real ``app.py``: local mode needs no sign-in; shared mode without a configured login shows only
what to configure; local accounts (streamlit-authenticator, bcrypt-hashed passwords) sign in, keep
each user in their own folder, refuse another user's study id with a plain message, and write the
audit log; the storage quota refuses an upload before anything is written. The listening-socket
check starts the README command itself (``streamlit run app.py``) and looks at its sockets.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from serve import free_port, stop_process, wait_http
from streamlit.testing.v1 import AppTest

from mdcm_app import workspace

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 90
PASSWORDS = {"alice": "alice-pw-7731", "bob": "bob-pw-4409"}


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    for name in ("MDCM_SHARED", "MDCM_LOGIN", "MDCM_ACCOUNTS", "MDCM_QUOTA_MB", "MDCM_TEACHERS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture()
def accounts(home, tmp_path, monkeypatch) -> Path:
    """Shared mode with two local accounts (alice is a teacher)."""
    from streamlit_authenticator.utilities.hasher import Hasher

    users = {
        name: {
            "name": name.title(),
            "email": f"{name}@school.test",
            "password": Hasher.hash(pw),
            **({"roles": ["teacher"]} if name == "alice" else {}),
        }
        for name, pw in PASSWORDS.items()
    }
    path = tmp_path / "accounts.yaml"
    path.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "credentials": {"usernames": users},
                "cookie": {"name": "mdcm_test_login", "key": "k" * 48, "expiry_days": 1},
            }
        )
    )
    monkeypatch.setenv("MDCM_SHARED", "1")
    monkeypatch.setenv("MDCM_ACCOUNTS", str(path))
    return path


def _app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)


def _texts(at: AppTest) -> str:
    parts = [str(e.value) for kind in ("title", "markdown", "error", "warning", "info", "caption")
             for e in getattr(at, kind)]  # fmt: skip
    return "\n".join(parts)


def _sign_in(name: str, password: str | None = None) -> AppTest:
    at = _app().run()
    assert "sign in" in _texts(at).lower()
    at.text_input[0].set_value(name)
    at.text_input[1].set_value(password or PASSWORDS[name])
    at.button[0].click().run()
    return at


def test_local_mode_needs_no_sign_in(home):
    at = _app().run()
    assert not at.exception
    assert "causal questions" in _texts(at)
    assert at.session_state["auth_user"] == workspace.LOCAL_USER
    at.button(key="home_open_example").click().run()  # the folder layout is the CLI's
    assert list((home / "studies").iterdir()) and not (home / "users").exists()


def test_shared_mode_without_a_login_refuses_and_says_what_to_configure(home, monkeypatch):
    monkeypatch.setenv("MDCM_SHARED", "1")
    at = _app().run()
    assert not at.exception
    text = _texts(at)
    assert "sign-in is not configured" in text
    assert "[auth]" in text and "MDCM_ACCOUNTS" in text and "secrets.toml" in text
    assert not at.button  # no page, no widget: nothing but the message
    assert not (home / "studies").exists() and not (home / "users").exists()


def test_a_network_address_switches_on_shared_mode(home):
    from streamlit import config

    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = _app().run()
    finally:
        config.set_option("server.address", old)
    text = _texts(at)
    assert "0.0.0.0" in text and "sign-in is not configured" in text
    assert not (home / "studies").exists()


def test_local_accounts_sign_in_isolate_users_and_audit(accounts, home):
    wrong = _sign_in("alice", "not-her-password")
    assert "Wrong user name or password" in _texts(wrong)
    assert "auth_user" not in wrong.session_state and not (home / "users").exists()

    alice = _sign_in("alice")
    assert not alice.exception
    user = alice.session_state["auth_user"]
    assert (user.login, user.provider, user.teacher) == ("alice", "accounts", True)
    alice.button(key="home_open_example").click().run()
    a_studies = {p.name for p in (home / "users" / user.key / "studies").iterdir()}
    assert a_studies and not (home / "studies").exists()  # nothing outside her folder

    bob = _sign_in("bob")
    b_user = bob.session_state["auth_user"]
    assert b_user.key != user.key and not b_user.teacher
    b_studies = {p.name for p in (home / "users" / b_user.key / "studies").iterdir()}
    assert not a_studies & b_studies
    shown = _texts(bob) + " ".join(str(o) for sb in bob.selectbox for o in sb.options)
    assert not any(sid in shown for sid in a_studies)
    # bob crafts alice's study id in the URL: refused with a plain message, nothing opened
    a_study = sorted(a_studies)[0]
    crafted = _app()
    crafted.session_state["auth_user"] = b_user
    crafted.session_state["authentication_status"] = True
    crafted.session_state["username"] = "bob"
    crafted.query_params["study"] = a_study
    crafted.run()
    assert f"Study '{a_study}' is not in your workspace" in _texts(crafted)
    assert "study_id" not in crafted.session_state

    events = [(r["event"], r["user"]) for r in workspace.read_audit(home)]
    assert ("login", "alice") in events and ("login", "bob") in events


def test_upload_over_quota_is_refused_and_nothing_is_written(home, monkeypatch):
    from mdcm_app import state

    monkeypatch.setenv("MDCM_QUOTA_MB", "1")
    sid = state.new_study(graph_text="X -> Y").study_id
    folder = state.study_dir(sid)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(workspace.QuotaError, match="storage quota"):
        state.admit_upload(sid, {"data_zip": ("big.zip", b"0" * 1_500_000)})
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    state.admit_upload(sid, {"data_zip": ("small.zip", b"0" * 1000)})  # fits: admitted
    kinds = [(r["event"], r["files"][0]["name"]) for r in workspace.read_audit(home)]
    assert kinds == [("upload_refused", "big.zip"), ("upload", "small.zip")]


# ---------------------------------------------------------------------- the listening socket
def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
        ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    return None


def test_readme_command_listens_on_loopback_only(tmp_path):
    """``streamlit run app.py`` as the README says (plus a free port): every listening socket
    of the server is on 127.0.0.1, and the machine's other address refuses connections."""
    psutil = pytest.importorskip("psutil")
    readme = (REPO / "README.md").read_text()
    assert "streamlit run app.py" in readme
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
        cwd=REPO, env={**__import__("os").environ, "MDCM_HOME": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        listening = [
            c.laddr
            for c in psutil.Process(proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening
        assert {a.port for a in listening} == {port}
        outside = _outside_address()
        if outside:
            with pytest.raises(OSError), socket.create_connection((outside, port), timeout=3):
                pass
    finally:
        stop_process(proc)


def test_config_file_sets_the_loopback_address():
    text = (REPO / ".streamlit" / "config.toml").read_text()
    import tomllib

    assert tomllib.loads(text)["server"]["address"] == "127.0.0.1"
    assert "shared mode" in textwrap.dedent(text)


def test_workspace_page_publish_copy_and_delete(accounts, home):
    from mdcm.runs import start_run

    alice = _sign_in("alice")
    a_user = alice.session_state["auth_user"]
    alice.switch_page("pages/workspace.py").run()
    assert not alice.exception
    [a_sid] = [p.name for p in (home / "users" / a_user.key / "studies").iterdir()]
    # a queued run of her study: the study cannot be deleted while it waits
    a_study = home / "users" / a_user.key / "studies" / a_sid
    held = start_run(
        home / "users" / a_user.key / "runs", example="backdoor", hold=True, label=a_sid
    )
    (a_study / "runs.json").write_text(json.dumps([held.run_id]))
    alice.checkbox(key="ws_confirm").check().run()
    alice.button(key="ws_delete").click().run()
    assert "still running or queued; stop it first" in alice.session_state["ws_notice"]
    assert a_study.is_dir()
    alice.button(key="ws_publish").click().run()
    assert "Published study" in alice.session_state["ws_notice"]
    assert (home / "published" / a_sid / "app.json").is_file()

    bob = _sign_in("bob")
    b_user = bob.session_state["auth_user"]
    bob.switch_page("pages/workspace.py").run()
    assert not [b for b in bob.button if b.key == "ws_publish"]  # not a teacher
    bob.button(key=f"ws_pub_open_{a_sid}").click().run()
    copy_sid = bob.session_state["study_id"]
    assert copy_sid != a_sid
    copy = home / "users" / b_user.key / "studies" / copy_sid
    assert json.loads((copy / "app.json").read_text())["graph"]
    published = (home / "published" / a_sid / "app.json").read_bytes()
    bob.selectbox(key="ws_study").set_value(copy_sid).run()
    bob.checkbox(key="ws_confirm").check().run()
    bob.button(key="ws_delete").click().run()
    assert not copy.exists() and (home / "published" / a_sid / "app.json").read_bytes() == published
    events = [(r["event"], r["user"]) for r in workspace.read_audit(home)]
    for ev in (("publish", "alice"), ("copy_published", "bob"), ("delete", "bob")):
        assert ev in events
