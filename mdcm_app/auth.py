"""Sign-in for a shared mdcm server, and the workspace of each browser session (issue #15).

* **Local mode** (the default: ``.streamlit/config.toml`` makes the app listen on loopback only):
  no sign-in; the workspace is ``MDCM_HOME`` itself, as for the command line.
* **Shared mode** (the app listens on a network address, or ``MDCM_SHARED=1``): nothing but a
  sign-in screen until the visitor signs in, with

  - **OpenID Connect** through Streamlit's own ``st.login`` / ``st.user`` / ``st.logout``
    (an ``[auth]`` section in ``.streamlit/secrets.toml``; needs Authlib), for institutions with
    an identity provider, or
  - **local accounts** through streamlit-authenticator (``MDCM_ACCOUNTS``: a YAML file with
    bcrypt-hashed passwords and a signed re-login cookie), for a class without one.

  Without either, shared mode shows only what to configure. No password or token is handled
  here: both libraries do that.

The signed-in :class:`~mdcm_app.workspace.User` is kept in ``st.session_state["auth_user"]`` by
:func:`gate` (run by ``app.py`` before any page); :func:`workspace_root` maps it to the user's own
folder, and :mod:`mdcm_app.state` resolves every path through it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

from . import jobs, workspace
from .workspace import LOCAL_USER, Settings, SettingsError, User

__all__ = [
    "audit",
    "current_user",
    "gate",
    "limits",
    "oidc_configured",
    "refuse_foreign_study",
    "settings",
    "sidebar",
    "start_dispatcher",
    "workspace_root",
]

log = logging.getLogger("mdcm_app")

USER_KEY = "auth_user"
AUTHENTICATOR_KEY = "auth_authenticator"
#: seconds between two passes of the background job dispatcher
DISPATCH_EVERY_S = 2.0
_OIDC_KEYS = ("client_id", "client_secret", "server_metadata_url")


# ---------------------------------------------------------------------- configuration
def _auth_section() -> Mapping:
    """The ``[auth]`` section of secrets.toml, or {} (no secrets file, or no section)."""
    try:
        if not st.secrets.load_if_toml_exists():
            return {}
        section = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - an unreadable secrets file counts as not configured
        return {}
    return section if isinstance(section, Mapping) else {}


def oidc_providers() -> list[str | None]:
    """Provider names to sign in with: [None] for a single provider configured in ``[auth]``
    itself, else the names of its ``[auth.<name>]`` sub-sections."""
    section = _auth_section()
    if not section.get("redirect_uri") or not section.get("cookie_secret"):
        return []
    if all(section.get(k) for k in _OIDC_KEYS):
        return [None]
    return sorted(
        name
        for name, sub in section.items()
        if isinstance(sub, Mapping) and all(sub.get(k) for k in _OIDC_KEYS)
    )


def oidc_configured() -> bool:
    return bool(oidc_providers())


#: the environment variables :meth:`Settings.from_env` reads
_ENV = (
    "MDCM_HOME",
    "MDCM_SHARED",
    "MDCM_LOGIN",
    "MDCM_ACCOUNTS",
    "MDCM_QUOTA_MB",
    "MDCM_JOBS_PER_USER",
    "MDCM_JOBS_TOTAL",
    "MDCM_TEACHERS",
)


def _secrets_stamp() -> tuple:
    """The secrets files and their modification times (a changed file is read again)."""
    out = []
    for f in st.get_option("secrets.files") or []:
        try:
            out.append((f, os.stat(os.path.expanduser(f)).st_mtime_ns))
        except OSError:
            out.append((f, None))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _settings_for(env: tuple, address: str | None, _stamp: tuple) -> Settings:
    return Settings.from_env(dict(env), address, oidc_configured=oidc_configured())


def settings() -> Settings:
    """This process's settings: environment variables and the server address it listens on
    (read again when one of them or a secrets file changes; every path of a page asks)."""
    env = tuple((k, os.environ[k]) for k in _ENV if k in os.environ)
    return _settings_for(env, st.get_option("server.address"), _secrets_stamp())


def limits(s: Settings) -> jobs.Limits:
    return jobs.Limits(per_user=s.jobs_per_user, total=s.jobs_total)


def current_user() -> User | None:
    """The signed-in user of this browser session (the local user in local mode), or None."""
    user = st.session_state.get(USER_KEY)
    return user if isinstance(user, User) else None


def workspace_root() -> Path:
    """The folder of the current session's user (MDCM_HOME itself in local mode); raises
    :class:`~mdcm_app.workspace.AccessError` in shared mode when nobody is signed in."""
    s = settings()
    return workspace.user_root(s, current_user() if s.shared else None)


def audit(event: str, /, **fields) -> None:
    """Append an event of the current session's user to the audit log (mdcm_app.workspace)."""
    workspace.audit(settings().home, event, current_user(), **fields)


# ---------------------------------------------------------------------- the gate
def gate() -> User:
    """Run before any page: in local mode the local user; in shared mode the signed-in user,
    or a sign-in screen (or what to configure) and ``st.stop()``."""
    try:
        s = settings()
    except SettingsError as exc:
        st.error(f"mdcm cannot start: {exc}", icon=":material/block:")
        st.stop()
    if not s.shared:
        st.session_state[USER_KEY] = LOCAL_USER
        return LOCAL_USER
    problem = s.login_problem(oidc_configured=oidc_configured())
    if problem:
        st.session_state.pop(USER_KEY, None)
        st.title("mdcm: sign-in is not configured")
        st.error(problem, icon=":material/lock:")
        st.stop()
    user = _oidc_user(s) if s.login == "oidc" else _accounts_user(s)
    if user is None:
        if st.session_state.pop(USER_KEY, None) is not None:
            _clear_session()
        st.stop()
    if st.session_state.get(USER_KEY) != user:
        _clear_session()
        st.session_state[USER_KEY] = user
        workspace.audit(s.home, "login", user, provider=user.provider)
    return user


def refuse_foreign_study() -> None:
    """A plain message when the URL's ``?study=`` names no study of this user's workspace (a
    crafted or shared link to someone else's study): the pages then open nothing; only the
    user's own folder is ever read."""
    from . import state

    sid = st.query_params.get("study")
    if not sid or sid == st.session_state.get("study_id"):
        return
    try:
        state.load_meta(sid)
    except (OSError, ValueError):
        st.warning(
            f"Study {str(sid)[:80]!r} is not in your workspace (it does not exist, or it is "
            "someone else's), so it was not opened.",
            icon=":material/block:",
        )


def _clear_session() -> None:
    """Forget the study and run a previous user of this browser session had open."""
    for key in ("study_id", "run_id", "graph_text", "graph_for"):
        st.session_state.pop(key, None)


def _sign_in_header() -> None:
    st.title("mdcm: causal questions about data with images")
    st.write(
        "This mdcm server is shared: sign in to reach your own studies, data and models. "
        "Nobody else can see them."
    )


def _oidc_user(s: Settings) -> User | None:
    """The OpenID Connect user of this session (``st.user``), or the sign-in buttons."""
    if not st.user.is_logged_in:
        _sign_in_header()
        for provider in oidc_providers():
            label = "Sign in" if provider is None else f"Sign in with {provider}"
            if st.button(label, key=f"auth_login_{provider or 'default'}", type="primary"):
                st.login(provider)
        return None
    info = st.user.to_dict()
    sub, iss = str(info.get("sub") or ""), str(info.get("iss") or "")
    if not sub:
        st.error("The identity provider did not say who you are (no 'sub' claim).")
        return None
    email = str(info.get("email") or "")
    verified = email and info.get("email_verified") is not False
    login = email if verified else str(info.get("preferred_username") or sub)
    return User(
        key=workspace.user_key("oidc", f"{iss}|{sub}", login),
        login=login,
        name=str(info.get("name") or login),
        provider="oidc",
        teacher=bool(verified) and email.lower() in s.teachers,
    )


def _authenticator(s: Settings):
    """The streamlit-authenticator object of this script run (made once per run: it renders
    its cookie component when made)."""
    import streamlit_authenticator as stauth

    auth = stauth.Authenticate(str(s.accounts_file), auto_hash=False)
    st.session_state[AUTHENTICATOR_KEY] = auth
    return auth


def _accounts_user(s: Settings) -> User | None:
    """The streamlit-authenticator user of this session, or its sign-in form."""
    if not st.session_state.get("authentication_status"):
        _sign_in_header()
    try:
        _authenticator(s).login(location="main", key="auth_accounts_login")
    except Exception as exc:  # noqa: BLE001 - the library's LoginError and friends
        st.error(f"Sign-in failed: {exc}")
        return None
    status = st.session_state.get("authentication_status")
    if status is False:
        st.error("Wrong user name or password.")
    if not status or not st.session_state.get("username"):
        return None
    username = str(st.session_state["username"])
    roles = st.session_state.get("roles") or []
    return User(
        key=workspace.user_key("accounts", username, username),
        login=username,
        name=str(st.session_state.get("name") or username),
        provider="accounts",
        teacher="teacher" in roles or username.lower() in s.teachers,
    )


def sidebar(user: User) -> None:
    """Who is signed in, and the sign-out button (shared mode only)."""
    if user.provider == "local":
        return
    s = settings()
    with st.sidebar:
        st.caption(
            f"Signed in as **{user.name}** ({user.login})" + (" · teacher" if user.teacher else "")
        )
        if user.provider == "oidc":
            if st.button("Sign out", key="auth_logout"):
                workspace.audit(s.home, "logout", user)
                st.session_state.pop(USER_KEY, None)
                _clear_session()
                st.logout()
        elif st.session_state.get(AUTHENTICATOR_KEY) is not None:
            st.session_state[AUTHENTICATOR_KEY].logout(
                "Sign out",
                "sidebar",
                key="auth_logout",
                callback=lambda _info: workspace.audit(s.home, "logout", user),
            )


# ---------------------------------------------------------------------- the job dispatcher
def _dispatch_forever(home: Path, lim: jobs.Limits) -> None:
    while True:
        try:
            jobs.dispatch(home, lim)
        except Exception:  # noqa: BLE001 - keep dispatching; the next pass may succeed
            log.exception("job dispatcher")
        time.sleep(DISPATCH_EVERY_S)


@st.cache_resource(show_spinner=False)
def _dispatcher(home: str, per_user: int | None, total: int | None) -> threading.Thread:
    t = threading.Thread(
        target=_dispatch_forever,
        args=(Path(home), jobs.Limits(per_user, total)),
        name="mdcm-job-dispatcher",
        daemon=True,
    )
    t.start()
    return t


def start_dispatcher(s: Settings) -> None:
    """One background thread per app process that launches queued training runs as slots free
    up (the queue itself is on disk, so it carries over an app restart)."""
    _dispatcher(str(s.home.resolve()), s.jobs_per_user, s.jobs_total)
