"""Per-user workspaces, settings, storage quota, published studies, the audit log and the locked
runs.json of a study (mdcm_app.workspace, mdcm_app.state, mdcm_app.runs_view; issue #15 and #9).

Oracles are independent of the code under test: file counts and bytes on disk, the set of ids
two concurrent writer processes wrote, the bcrypt check of streamlit-authenticator itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mdcm_app import workspace
from mdcm_app.workspace import AccessError, QuotaError, Settings, SettingsError, User

REPO = Path(__file__).resolve().parent.parent


def _settings(tmp_path: Path, address: str = "127.0.0.1", **env: str) -> Settings:
    return Settings.from_env({"MDCM_HOME": str(tmp_path), **env}, address)


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("address", "shared"),
    [("127.0.0.1", False), ("localhost", False), ("::1", False), ("127.0.0.2", False),
     ("0.0.0.0", True), ("", True), (None, True), ("192.168.1.20", True), ("::", True)],
)  # fmt: skip
def test_shared_mode_follows_the_listening_address(tmp_path, address, shared):
    s = Settings.from_env({"MDCM_HOME": str(tmp_path)}, address)
    assert s.shared is shared
    # a network address cannot be forced back to local mode
    assert Settings.from_env({"MDCM_SHARED": "0"}, address).shared is shared
    assert Settings.from_env({"MDCM_SHARED": "1"}, address).shared is True


def test_limits_default_in_shared_mode_and_are_configurable(tmp_path):
    local = _settings(tmp_path)
    assert (local.quota_bytes, local.jobs_per_user, local.jobs_total) == (None, None, None)
    shared = _settings(tmp_path, MDCM_SHARED="1")
    assert shared.quota_bytes == 2000 * 10**6
    assert (shared.jobs_per_user, shared.jobs_total) == (1, 4)
    s = _settings(
        tmp_path, MDCM_SHARED="1", MDCM_QUOTA_MB="5", MDCM_JOBS_PER_USER="2",
        MDCM_JOBS_TOTAL="unlimited", MDCM_TEACHERS=" T@School.org , bob ",
    )  # fmt: skip
    assert (s.quota_bytes, s.jobs_per_user, s.jobs_total) == (5 * 10**6, 2, None)
    assert s.teachers == {"t@school.org", "bob"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("MDCM_QUOTA_MB", "lots"), ("MDCM_JOBS_PER_USER", "0"), ("MDCM_JOBS_TOTAL", "-3"),
     ("MDCM_SHARED", "maybe"), ("MDCM_LOGIN", "ldap")],
)  # fmt: skip
def test_bad_settings_name_the_variable(tmp_path, name, value):
    with pytest.raises(SettingsError, match=name):
        _settings(tmp_path, **{name: value})


def test_shared_mode_without_login_says_what_to_configure(tmp_path):
    s = _settings(tmp_path, address="0.0.0.0")
    problem = s.login_problem(oidc_configured=False)
    assert "0.0.0.0" in problem and "[auth]" in problem and "MDCM_ACCOUNTS" in problem
    assert _settings(tmp_path).login_problem(oidc_configured=False) is None  # local mode
    oidc = Settings.from_env({}, "0.0.0.0", oidc_configured=True)
    assert oidc.login == "oidc" and oidc.login_problem(oidc_configured=True) is None
    forced = _settings(tmp_path, address="0.0.0.0", MDCM_LOGIN="oidc")
    assert "[auth]" in forced.login_problem(oidc_configured=False)


def _accounts_file(path: Path, password: str = "$HASH", key: str = "k" * 40) -> Path:
    from streamlit_authenticator.utilities.hasher import Hasher

    pw = Hasher.hash("correct horse") if password == "$HASH" else password
    path.write_text(
        textwrap.dedent(
            f"""\
            credentials:
              usernames:
                alice:
                  name: Alice
                  email: alice@school.test
                  password: '{pw}'
                  roles: [teacher]
            cookie:
              name: mdcm_login
              key: '{key}'
              expiry_days: 1
            """
        )
    )
    return path


def test_accounts_file_needs_hashed_passwords_and_a_strong_cookie_key(tmp_path):
    from streamlit_authenticator.utilities.hasher import Hasher

    good = _accounts_file(tmp_path / "ok.yaml")
    assert workspace.accounts_file_problem(good) is None
    rec = __import__("yaml").safe_load(good.read_text())["credentials"]["usernames"]["alice"]
    assert Hasher.check_pw("correct horse", rec["password"])  # the library's own check
    plain = _accounts_file(tmp_path / "plain.yaml", password="secret")
    assert "'alice' has no bcrypt-hashed password" in workspace.accounts_file_problem(plain)
    weak = _accounts_file(tmp_path / "weak.yaml", key="some_key")
    assert "at least 32 characters" in workspace.accounts_file_problem(weak)
    missing = workspace.accounts_file_problem(tmp_path / "nope.yaml")
    assert "does not exist" in missing
    s = _settings(tmp_path, MDCM_SHARED="1", MDCM_ACCOUNTS=str(plain))
    assert s.login == "accounts" and "bcrypt" in s.login_problem(oidc_configured=False)


# ---------------------------------------------------------------------- users and folders
def test_user_keys_are_distinct_stable_and_never_a_path(tmp_path):
    a = workspace.user_key("oidc", "https://idp|alice", "alice@school.test")
    assert a == workspace.user_key("oidc", "https://idp|alice", "alice@school.test")
    # the same readable part for two people still gives two folders
    assert a != workspace.user_key("oidc", "https://other-idp|alice", "alice@school.test")
    assert a != workspace.user_key("accounts", "https://idp|alice", "alice@school.test")
    evil = workspace.user_key("accounts", "../../etc", "../../etc/passwd")
    assert "/" not in evil and ".." not in evil
    s = _settings(tmp_path, MDCM_SHARED="1")
    root = workspace.user_root(s, User(evil, "x", "x", "accounts"))
    assert root.parent == tmp_path / "users"
    with pytest.raises(AccessError):
        workspace.user_root(s, None)  # shared mode, nobody signed in: no folder at all
    with pytest.raises(AccessError):
        workspace.user_root(s, User("../alice", "x", "x", "accounts"))
    assert workspace.user_root(_settings(tmp_path), None) == tmp_path  # local mode: MDCM_HOME


# ---------------------------------------------------------------------- quota
def test_quota_counts_files_and_refuses_what_does_not_fit(tmp_path):
    root = tmp_path / "ws"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x.bin").write_bytes(b"0" * 1500)
    (root / "a" / "b" / "y.bin").write_bytes(b"0" * 500)
    (root / "link").symlink_to(tmp_path)  # never followed
    assert workspace.used_bytes(root) == 2000
    s = _settings(tmp_path, MDCM_QUOTA_MB="1")
    assert workspace.check_room(s, root, 998_000) == 2000
    with pytest.raises(QuotaError, match="storage quota"):
        workspace.check_room(s, root, 998_001)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("d/data.csv", "0" * 100_000)  # compresses to a few hundred bytes
    data = buf.getvalue()
    assert workspace.upload_bytes("d.zip", data) == len(data) + 100_000


# ---------------------------------------------------------------------- audit log
def test_audit_log_only_grows_and_records_who_did_what(tmp_path):
    alice = User("alice-0123456789ab", "alice@school.test", "Alice", "oidc")
    workspace.audit(tmp_path, "login", alice, provider="oidc")
    before = (tmp_path / workspace.AUDIT_FILE).read_bytes()
    workspace.audit(tmp_path, "upload", alice, study="s1", files=[{"name": "d.zip", "bytes": 3}])
    workspace.audit(tmp_path, "delete", None, what="run", run="r1", user="forged")
    after = (tmp_path / workspace.AUDIT_FILE).read_bytes()
    assert after.startswith(before)  # appended, never rewritten
    recs = [json.loads(line) for line in after.decode().splitlines()]
    assert [r["event"] for r in recs] == ["login", "upload", "delete"]
    assert recs[0]["user"] == "alice@school.test" and recs[1]["files"][0]["name"] == "d.zip"
    assert recs[2]["user"] == "local"  # a field cannot overwrite who did it
    assert all(isinstance(r["time"], float) for r in recs)
    assert workspace.read_audit(tmp_path) == recs


def test_audit_log_keeps_every_line_of_concurrent_writers(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from mdcm_app import workspace
        for i in range(200):
            workspace.audit(Path({str(tmp_path)!r}), "upload", None, writer=sys.argv[1], i=i)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, w], cwd=REPO) for w in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    recs = workspace.read_audit(tmp_path)
    lines = (tmp_path / workspace.AUDIT_FILE).read_text().splitlines()
    assert len(lines) == len(recs) == 400
    assert {(r["writer"], r["i"]) for r in recs} == {(w, i) for w in "ab" for i in range(200)}


# ---------------------------------------------------------------------- runs.json (#9)
def test_two_writers_of_runs_json_lose_no_run(tmp_path):
    """Two processes record 60 runs each into one study's runs.json at the same time."""
    home = tmp_path / "home"
    env = dict(os.environ, MDCM_HOME=str(home))
    subprocess.run(
        [sys.executable, "-c", "from mdcm_app import state; print(state.new_study().study_id)"],
        cwd=REPO, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    sid = next((home / "studies").iterdir()).name
    code = textwrap.dedent(
        f"""
        import sys
        from mdcm_app import runs_view
        for i in range(60):
            runs_view.record_run({sid!r}, f"{{sys.argv[1]}}-{{i:03d}}")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, w], cwd=REPO, env=env) for w in "ab"]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    ids = json.loads((home / "studies" / sid / "runs.json").read_text())
    assert sorted(ids) == sorted(f"{w}-{i:03d}" for w in "ab" for i in range(60))
    assert not list((home / "studies" / sid).glob("*.tmp"))  # no temp file left behind


# ---------------------------------------------------------------------- published studies
def test_teacher_publishes_read_only_and_students_get_their_own_copy(tmp_path):
    s = _settings(tmp_path, MDCM_SHARED="1")
    teacher = User("t-0123456789ab", "t@school.test", "T", "oidc", teacher=True)
    student = User("s-0123456789ab", "s@school.test", "S", "oidc")
    src = tmp_path / "users" / teacher.key / "studies" / "lesson-1"
    (src / "study" / "obs").mkdir(parents=True)
    (src / "study" / "obs" / "data.csv").write_text("X,Y\n0,1\n")
    (src / "uploads").mkdir()
    (src / "uploads" / "raw.zip").write_bytes(b"raw")
    (src / "app.json").write_text(
        json.dumps({"id": "lesson-1", "title": "Lesson", "graph": "X -> Y"})
    )
    with pytest.raises(AccessError, match="teacher"):
        workspace.publish_study(s, student, src)
    assert workspace.publish_study(s, teacher, src) == "lesson-1"
    [rec] = workspace.list_published(s)
    assert rec["title"] == "Lesson" and rec["publisher"] == "t@school.test"
    pub = tmp_path / "published" / "lesson-1"
    assert not (pub / "uploads").exists()  # raw uploads stay private
    dest = tmp_path / "users" / student.key / "studies" / "lesson-copy"
    meta = workspace.copy_published(s, "lesson-1", dest)
    assert meta["graph"] == "X -> Y" and "publisher" not in meta
    (dest / "study" / "obs" / "data.csv").write_text("changed")
    assert (pub / "study" / "obs" / "data.csv").read_text() == "X,Y\n0,1\n"  # original untouched
    with pytest.raises(AccessError):
        workspace.copy_published(s, "../users", tmp_path / "x")
    with pytest.raises(AccessError):
        workspace.unpublish_study(s, student, "lesson-1")
    workspace.unpublish_study(s, teacher, "lesson-1")
    assert workspace.list_published(s) == []
