"""Who may see what on an mdcm server: local-only or shared mode, per-user workspaces, the
storage quota, published studies and the append-only audit log (issue #15). No Streamlit here:
:mod:`mdcm_app.auth` finds out who the user is; this module says where their files live and what
they may do, so every rule is a plain function with a test.

Layout under the data home ``MDCM_HOME`` (default ``./.mdcm``)::

    local mode (the default; the app listens on loopback only):
        MDCM_HOME/studies/, MDCM_HOME/runs/      as the command line uses them
    shared mode (the app listens on a network address, or MDCM_SHARED=1):
        MDCM_HOME/users/<user key>/studies/      the user's studies (app.json, study/, uploads/)
        MDCM_HOME/users/<user key>/runs/         the user's training runs and their models
        MDCM_HOME/users/<user key>/exports/      files the app writes for the user to download
        MDCM_HOME/published/<study id>/          read-only studies a teacher published to the class
    both:
        MDCM_HOME/audit.jsonl                    append-only log of logins, uploads, runs, deletions
        MDCM_HOME/jobs.json                      the training-job queue (mdcm_app.jobs)

Settings come from environment variables (see :meth:`Settings.from_env` and the README section
"Running for a group"); a bad value is a :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdcm.files import JsonFileError, atomic_write_json, locked, read_json_file

__all__ = [
    "LOCAL_USER",
    "AccessError",
    "QuotaError",
    "Settings",
    "SettingsError",
    "User",
    "audit",
    "check_room",
    "copy_published",
    "list_published",
    "publish_study",
    "read_audit",
    "unpublish_study",
    "upload_bytes",
    "used_bytes",
    "user_key",
    "user_root",
]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
AUDIT_FILE = "audit.jsonl"
PUBLISHED = "published"
USERS = "users"
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}-[0-9a-f]{12}\Z")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MB = 1_000_000

#: defaults of the fair-use limits in shared mode (local mode: no limits unless set)
SHARED_DEFAULTS = {"quota_mb": 2000, "jobs_per_user": 1, "jobs_total": 4}


class SettingsError(ValueError):
    """A bad MDCM_* setting, or shared mode without a configured login."""


class AccessError(PermissionError):
    """An action on something that is not the user's (a crafted study id, run id or path)."""


class QuotaError(ValueError):
    """An upload or a training run that would take the user over their storage quota."""


# ---------------------------------------------------------------------- settings
def _int_env(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("none", "unlimited"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number (or 'unlimited')") from None
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1 (or 'unlimited')")
    return value


def is_loopback(address: str | None) -> bool:
    """Whether the server address accepts connections from this machine only. An empty address
    means every interface (Streamlit's own default), so it is not loopback."""
    a = (address or "").strip()
    return a in LOOPBACK or a.startswith("127.")


@dataclass(frozen=True)
class Settings:
    """How this app process runs: local-only or shared, which login, which limits."""

    home: Path
    shared: bool
    address: str = "127.0.0.1"
    login: str | None = None  # "oidc" | "accounts" | None (local mode, or not configured)
    accounts_file: Path | None = None
    quota_bytes: int | None = None
    jobs_per_user: int | None = None
    jobs_total: int | None = None
    teachers: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], server_address: str | None, *, oidc_configured: bool = False
    ) -> Settings:
        """Read ``MDCM_HOME``, ``MDCM_SHARED``, ``MDCM_LOGIN``, ``MDCM_ACCOUNTS``,
        ``MDCM_QUOTA_MB``, ``MDCM_JOBS_PER_USER``, ``MDCM_JOBS_TOTAL`` and ``MDCM_TEACHERS``.

        Shared mode is on when the server listens on anything but loopback (it cannot be turned
        off then) or when ``MDCM_SHARED=1`` (e.g. behind a reverse proxy)."""
        home = Path(env.get("MDCM_HOME") or ".mdcm").expanduser()
        flag = env.get("MDCM_SHARED", "").strip().lower()
        if flag not in ("", "0", "1", "true", "false", "yes", "no"):
            raise SettingsError(f"MDCM_SHARED={flag!r}: use 1 (shared) or 0")
        shared = flag in ("1", "true", "yes") or not is_loopback(server_address)
        login = env.get("MDCM_LOGIN", "").strip().lower() or None
        if login not in (None, "oidc", "accounts"):
            raise SettingsError(f"MDCM_LOGIN={login!r}: use 'oidc' or 'accounts'")
        accounts = env.get("MDCM_ACCOUNTS", "").strip()
        if login is None:
            login = "oidc" if oidc_configured else ("accounts" if accounts else None)
        defaults = SHARED_DEFAULTS if shared else dict.fromkeys(SHARED_DEFAULTS)
        quota_mb = _int_env(env, "MDCM_QUOTA_MB", defaults["quota_mb"])
        teachers = frozenset(
            t.strip().lower() for t in env.get("MDCM_TEACHERS", "").split(",") if t.strip()
        )
        return cls(
            home=home,
            shared=shared,
            address=(server_address or "").strip(),
            login=login,
            accounts_file=Path(accounts).expanduser() if accounts else None,
            quota_bytes=None if quota_mb is None else quota_mb * MB,
            jobs_per_user=_int_env(env, "MDCM_JOBS_PER_USER", defaults["jobs_per_user"]),
            jobs_total=_int_env(env, "MDCM_JOBS_TOTAL", defaults["jobs_total"]),
            teachers=teachers,
        )

    def login_problem(self, *, oidc_configured: bool) -> str | None:
        """Why shared mode cannot start (what to configure), or None when it can."""
        if not self.shared:
            return None
        why = (
            f"the app listens on {self.address or 'every network interface'}"
            if not is_loopback(self.address)
            else "MDCM_SHARED=1 is set"
        )
        if self.login is None:
            return (
                f"Shared mode is on ({why}) but no login is configured. Either add an [auth] "
                "section (OpenID Connect: redirect_uri, cookie_secret, client_id, client_secret, "
                "server_metadata_url) to .streamlit/secrets.toml, or set MDCM_ACCOUNTS to a "
                "streamlit-authenticator accounts file with hashed passwords. See the README "
                "section 'Running for a group'."
            )
        if self.login == "oidc" and not oidc_configured:
            return (
                "MDCM_LOGIN=oidc but .streamlit/secrets.toml has no [auth] section with "
                "redirect_uri, cookie_secret, client_id, client_secret and server_metadata_url."
            )
        if self.login == "accounts":
            if self.accounts_file is None:
                return "MDCM_LOGIN=accounts but MDCM_ACCOUNTS (the accounts file) is not set."
            return accounts_file_problem(self.accounts_file)
        return None


def accounts_file_problem(path: Path) -> str | None:
    """What is wrong with a streamlit-authenticator accounts file, or None. Checked before the
    library reads it, so a typo gives one plain sentence and never a login with a weak key."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"the accounts file {path} (MDCM_ACCOUNTS) does not exist"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return f"the accounts file {path} cannot be read: {exc}"
    users = (
        ((data or {}).get("credentials") or {}).get("usernames") if isinstance(data, dict) else None
    )
    if not isinstance(users, dict) or not users:
        return f"the accounts file {path} has no credentials: usernames: entries"
    cookie = data.get("cookie") or {}
    key = str(cookie.get("key") or "") if isinstance(cookie, dict) else ""
    if len(key) < 32 or not cookie.get("name"):
        return (
            f"the accounts file {path} needs cookie: name: and a random cookie: key: of at least "
            '32 characters (python -c "import secrets; print(secrets.token_hex(32))")'
        )
    for name, rec in users.items():
        pw = str((rec or {}).get("password") or "") if isinstance(rec, dict) else ""
        if not pw.startswith("$2"):
            return (
                f"the accounts file {path}: user {name!r} has no bcrypt-hashed password; hash it "
                "with streamlit-authenticator's Hasher (see the README)"
            )
    return None


# ---------------------------------------------------------------------- users and workspaces
@dataclass(frozen=True)
class User:
    """A signed-in person. ``key`` names their folder; ``login`` (an e-mail address or an
    account name) is what MDCM_TEACHERS lists and what the audit log records."""

    key: str
    login: str
    name: str
    provider: str  # "oidc" | "accounts" | "local"
    teacher: bool = False


LOCAL_USER = User(key="local", login="local", name="local user", provider="local")


def user_key(provider: str, subject: str, hint: str = "") -> str:
    """A stable folder name for a user: a readable part from ``hint`` (e-mail or name) and 12
    hex digits of sha256(provider, subject), so two people never share a folder even when their
    readable parts agree, and no identity can name a path (``..``, ``/``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "user"
    digest = hashlib.sha256(f"{provider}\x00{subject}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}"


def user_root(settings: Settings, user: User | None) -> Path:
    """The folder holding this user's studies, runs and exports: MDCM_HOME itself in local
    mode, ``MDCM_HOME/users/<key>`` in shared mode (where no user means no access)."""
    if not settings.shared:
        return settings.home
    if user is None:
        raise AccessError("sign in first")
    if not _KEY_RE.match(user.key):
        raise AccessError(f"bad user key {user.key[:60]!r}")
    return settings.home / USERS / user.key


# ---------------------------------------------------------------------- storage quota
def used_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (symbolic links are not followed)."""
    total = 0
    stack = [Path(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def upload_bytes(name: str, data: bytes) -> int:
    """What storing an upload costs: the raw file (kept under ``uploads/``) plus, for a zip,
    the declared size of its members (they are unpacked into the study)."""
    size = len(data)
    if name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                size += sum(max(0, i.file_size) for i in z.infolist())
        except (zipfile.BadZipFile, OSError, ValueError):
            pass  # the import will refuse it with a clear message; only the raw bytes count
    return size


def _mb(n: int) -> str:
    return f"{n / MB:,.1f} MB"


def check_room(settings: Settings, root: Path, incoming: int, *, what: str = "this upload") -> int:
    """Raise :class:`QuotaError` when ``incoming`` more bytes would take the workspace over its
    quota; return the bytes in use."""
    used = used_bytes(root)
    quota = settings.quota_bytes
    if quota is not None and used + incoming > quota:
        free = max(0, quota - used)
        raise QuotaError(
            f"{what} needs {_mb(incoming)} but only {_mb(free)} of your {_mb(quota)} storage "
            "quota are free; delete old runs or studies on the Workspace page first"
        )
    return used


# ---------------------------------------------------------------------- audit log
def audit(home: Path, event: str, user: User | None, /, **fields: Any) -> None:
    """Append one event to ``MDCM_HOME/audit.jsonl`` (opened for appending only, under a lock,
    flushed and fsynced), so the log only grows: logins, uploads, trainings, deletions."""
    u = user or LOCAL_USER
    record = {"time": round(time.time(), 3), "event": event, "user": u.login, "user_key": u.key}
    record.update({k: v for k, v in fields.items() if k not in record})
    line = json.dumps(record, sort_keys=True, default=str, ensure_ascii=True) + "\n"
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / "audit.lock"), open(home / AUDIT_FILE, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_audit(home: Path) -> list[dict]:
    """The audit log, oldest first (a torn last line after a crash is skipped)."""
    try:
        text = (Path(home) / AUDIT_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


# ---------------------------------------------------------------------- published studies
def _published_root(settings: Settings) -> Path:
    return settings.home / PUBLISHED


def _check_id(study_id: str) -> str:
    if not isinstance(study_id, str) or not _ID_RE.match(study_id):
        raise AccessError(f"bad study id {str(study_id)[:80]!r}")
    return study_id


def publish_study(settings: Settings, user: User, study_folder: Path) -> str:
    """Copy a teacher's study (graph, kinds and uploaded datasets; not its raw uploads or runs)
    to ``MDCM_HOME/published/<id>/``, where every signed-in user can read it and open a copy
    of it. Only teachers publish; publishing again replaces the published copy."""
    if not user.teacher:
        raise AccessError("only a teacher (MDCM_TEACHERS, or the 'teacher' role) can publish")
    study_id = _check_id(study_folder.name)
    meta = read_json_file(study_folder / "app.json")
    dest = _published_root(settings) / study_id
    tmp = dest.with_name(f".{study_id}.{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        if (study_folder / "study").is_dir():
            shutil.copytree(study_folder / "study", tmp / "study", symlinks=False)
        meta.update(publisher=user.login, publisher_key=user.key, published=time.time())
        atomic_write_json(tmp / "app.json", meta)
        with locked(_published_root(settings) / ".lock"):
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return study_id


def unpublish_study(settings: Settings, user: User, study_id: str) -> None:
    """Withdraw a published study (teachers only)."""
    if not user.teacher:
        raise AccessError("only a teacher can withdraw a published study")
    dest = _published_root(settings) / _check_id(study_id)
    with locked(_published_root(settings) / ".lock"):
        shutil.rmtree(dest, ignore_errors=True)


def list_published(settings: Settings) -> list[dict]:
    """The published studies' app.json records (with ``publisher`` and ``published``), newest
    first; unreadable ones are skipped."""
    root = _published_root(settings)
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name.startswith(".") or not _ID_RE.match(d.name):
            continue
        try:
            rec = read_json_file(d / "app.json")
        except JsonFileError:
            continue
        rec["id"] = d.name
        out.append(rec)
    return sorted(out, key=lambda r: -float(r.get("published") or 0))


def copy_published(settings: Settings, study_id: str, dest_folder: Path) -> dict:
    """Copy a published study into the user's own ``dest_folder`` (a new study folder) and
    return its app.json record; the published original is never written to."""
    src = _published_root(settings) / _check_id(study_id)
    try:
        meta = read_json_file(src / "app.json")
    except JsonFileError:
        raise AccessError(f"no published study {study_id!r}") from None
    dest_folder.mkdir(parents=True)
    if (src / "study").is_dir():
        shutil.copytree(src / "study", dest_folder / "study", symlinks=False)
    (dest_folder / "uploads").mkdir()
    for k in ("publisher", "publisher_key", "published"):
        meta.pop(k, None)
    return meta
