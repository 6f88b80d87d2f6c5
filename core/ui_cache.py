"""The one module of core/ that knows Streamlit: cached getters for the process-wide objects pages share.

``st.cache_resource`` keeps one workbench (database, embedding model, store hub) per data dir for the
whole server process, shared by every browser session and safe across threads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import streamlit as st

from core.config import Settings
from core.corpus.embeddings import Embedder
from core.errors import GroundworkError, ValidationError
from core.workbench import Workbench


def _leave_pages_directory_mode() -> None:
    """Make app.py's st.navigation govern every session, whichever URL the first visitor opened.

    Streamlit treats an app with a ``pages/`` folder as a legacy multipage app until some run calls
    st.navigation; a first visit straight to e.g. /generate would run that page alone, without app.py
    (no page config, no sidebar, a file-name menu). This flips the process-wide switch st.navigation
    itself flips, then reruns so this session goes through app.py too.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_pages_directory_mode()


def settings() -> Settings:
    """Settings from the environment, with ``.streamlit/secrets.toml`` values as fallbacks for keys."""
    overrides = {}
    try:
        secrets = dict(st.secrets)
    except Exception:  # no secrets.toml: that's the normal case
        secrets = {}
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QDRANT_URL", "QDRANT_API_KEY", "OPENAI_API_KEY"):
        if name in secrets:
            overrides.setdefault(name, str(secrets[name]))
    env = {**overrides, **{k: v for k, v in os.environ.items() if v}}
    base = Settings.from_env(env)
    # The example set (Home page) switches this browser session to a data dir of its own.
    session_dir = st.session_state.get("app.data_dir")
    return base.replace(data_dir=session_dir) if session_dir else base


@st.cache_resource(show_spinner=False)
def _embedder(model_name: str, cache: str, cache_mb: int) -> Embedder:
    return Embedder.from_settings(Settings(embedding_model=model_name, embedding_cache=cache,
                                           embedding_cache_mb=cache_mb))


@st.cache_resource(show_spinner=False)
def _workbench(data_dir: str, collection: str, embedding_model: str, qdrant_url: str) -> Workbench:
    s = settings().replace(data_dir=data_dir, collection=collection, embedding_model=embedding_model,
                           qdrant_url=qdrant_url)
    # Wait a little for a CLI batch that holds the embedded store for a moment (it releases it quickly).
    return Workbench(s, embedder=_embedder(embedding_model, s.embedding_cache, s.embedding_cache_mb),
                     wait_for_store_s=10.0)


def workbench(data_dir: str | Path | None = None) -> Workbench:
    """The shared workbench of this session's data dir (or of ``data_dir``)."""
    s = settings()
    return _workbench(str(Path(data_dir).resolve()) if data_dir else str(s.data_path), s.collection,
                      s.embedding_model, s.qdrant_url)


def data_dir_problem() -> str:
    """One line when this session's data dir cannot be written by the user the app runs as (else "").

    Every page writes (prompt versions, reviews, runs, the index), so the app says so once, up front, instead
    of each page failing with SQLite's "attempt to write a readonly database".
    """
    from core.readonly import is_read_only, read_only_message, user_name

    try:
        s = settings()
    except GroundworkError:
        return ""  # a bad environment variable: the pages say which
    if not is_read_only(s):
        return ""
    return read_only_message(s, what_to_do=(
        f"the app writes there (prompts, reviews, runs), so start it as the owner, give {user_name()} write access, "
        "or set GROUNDWORK_DATA_DIR to a copy of your own. Reading only: `groundwork runs`, `groundwork search`, "
        "`groundwork export --out DIR` work on it as it is."))


def main_data_dir() -> Path:
    """The data dir the server was started on, whatever this session switched to."""
    return Settings.from_env().data_path


def sidebar() -> None:
    """Which data dir and provider this session uses, shown on every page."""
    try:
        s = session_settings()
    except GroundworkError as e:  # a bad environment variable: the page itself shows the message
        st.sidebar.error(str(e))
        return
    with st.sidebar:
        st.caption(f"Data dir: `{s.data_path}`")
        if st.session_state.get("app.data_dir"):
            st.caption("Viewing the demo data dir: the sample corpus and the example set.")
            if st.button("Back to my data dir", key="app.back_to_main"):
                del st.session_state["app.data_dir"]
                st.rerun()
        try:
            from core.providers.registry import provider_info

            info = provider_info(s, api_key=session_api_key())
            st.caption(f"LLM: {info.name} · `{info.model}`")
        except Exception:  # a broken provider setting: the Settings page says why
            st.caption(f"LLM: {s.resolved_provider}")


# Widget state that must outlive a page switch. Streamlit drops a widget's value when its page is not
# drawn; each change is copied aside by the widget's callback and put back before the page draws again.
_MEMORY = "app.form_memory"


def remember(key: str, options: list | None = None) -> str:
    """``key`` for a widget whose value lasts the browser session (restored when its page opens again).

    Widgets use it through :func:`remembered`, whose change callback stores each new value. ``options``: a
    choice widget's options (a remembered value no longer among them is dropped).
    """
    memory = st.session_state.setdefault(_MEMORY, {})
    if key not in st.session_state and key in memory and (options is None or memory[key] in options):
        st.session_state[key] = memory[key]
    return key


def remembered(key: str, options: list | None = None) -> dict:
    """Widget keyword arguments for a value that lasts the browser session: ``st.number_input(...,
    **ui_cache.remembered("generate.seed"))``. Its change callback stores the value at once, before any
    script code runs, so a page switch that cuts the run short cannot lose it."""
    return {"key": remember(key, options), "on_change": _remember_now, "args": (key,)}


def _remember_now(key: str) -> None:
    st.session_state.setdefault(_MEMORY, {})[key] = st.session_state.get(key)


# Provider choices made in the Settings page live in the browser session only; keys are never written.
_SESSION_OVERRIDES = {"provider": "settings.provider", "gemini_model": "settings.gemini_model",
                      "openai_base_url": "settings.openai_base_url", "openai_model": "settings.openai_model",
                      "local_model_path": "settings.local_model_path"}


def session_settings() -> Settings:
    """Settings with this browser session's provider choices applied, keys scoped (see core.access).

    A GGUF path typed outside the allowed folders is not used; ``settings.path_error`` says why.
    """
    from core.access import session_settings as scoped

    choices = {field: st.session_state.get(key) for field, key in _SESSION_OVERRIDES.items()}
    typed_key = st.session_state.get(OPENAI_KEY) or None
    try:
        st.session_state.pop("settings.path_error", None)
        return scoped(settings(), choices, typed_key)
    except ValidationError as e:  # every page calls this: the Settings page shows why the path was not used
        st.session_state["settings.path_error"] = str(e)
        return scoped(settings(), {**choices, "local_model_path": None}, typed_key)


# Keys typed on the Settings page: kept under non-widget names, so they last the browser session (a
# widget's own value is dropped when its page is left) and are never written anywhere.
GEMINI_KEY = "settings.gemini_key"
OPENAI_KEY = "settings.openai_key"


def session_api_key() -> str | None:
    """A Gemini key typed on the Settings page for this session, if any (else the environment's is used)."""
    return st.session_state.get(GEMINI_KEY) or None


def key_hint(secret: str | None) -> str:
    """How a typed key is shown: set, and its last three characters only."""
    return f"key set · …{secret[-3:]}" if secret else "no key typed"


def candidate_settings(provider: str) -> Settings:
    """This session's settings with ``provider`` in place of the active one (to test before switching)."""
    return session_settings().replace(provider=provider)


def show_error(e: Exception) -> None:
    """A user error as a message; anything else as a short message that still names the problem."""
    if isinstance(e, GroundworkError):
        st.error(str(e))
    else:
        st.error(f"Something went wrong: {type(e).__name__}: {str(e)[:300]}")


@st.cache_resource(show_spinner=False)
def _jobs(data_dir: str, collection: str, embedding_model: str, qdrant_url: str):
    from core.generation.jobs import JobManager

    return JobManager(_workbench(data_dir, collection, embedding_model, qdrant_url))


def jobs():
    """The background-run manager of this data dir (one per server process)."""
    s = settings()
    return _jobs(str(s.data_path), s.collection, s.embedding_model, s.qdrant_url)


def provider_factory():
    """Builds providers from this session's choices; a typed key stays in this closure, in memory only."""
    from core.providers.registry import make_provider

    s = session_settings()
    key = session_api_key()
    return lambda gate: make_provider(s, gate=gate, api_key=key), s


# Who is signed in, when the app runs behind authentication (README: "Behind authentication").
_PROXY_USER_HEADERS = ("X-Forwarded-Email", "X-Forwarded-User", "X-Auth-Request-Email", "X-Auth-Request-User")


def auth_configured() -> bool:
    """Streamlit's own OIDC login (st.login) is set up in .streamlit/secrets.toml ([auth])."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def signed_in_user() -> str:
    """The signed-in user's e-mail or name: from st.login when configured, else from an auth proxy's header."""
    if auth_configured():
        try:
            if st.user.is_logged_in:
                return str(st.user.get("email") or st.user.get("name") or "signed in")
        except Exception:
            return ""
    try:
        headers = st.context.headers
    except Exception:  # outside a browser session
        return ""
    user = next((headers[h] for h in _PROXY_USER_HEADERS if headers.get(h)), "")
    return user if isinstance(user, str) else ""  # AppTest's stand-in context answers with mock objects


# The reviewer's name, kept for this browser in a cookie (no query parameter, nothing server-side): a reload
# or a new tab starts a new Streamlit session, which reads it back from the request's cookies.
REVIEWER_COOKIE = "groundwork_reviewer"
_REVIEWER = "reviewer"
_REVIEWER_PENDING = "app.reviewer_cookie_pending"


def reviewer_name() -> str:
    """Who reviews in this browser session: the signed-in user (st.login or an auth proxy), else the name
    typed on the Review page, read back from this browser's cookie after a reload."""
    user = signed_in_user()
    if user:
        return user
    if _REVIEWER not in st.session_state:
        try:
            saved = st.context.cookies.get(REVIEWER_COOKIE) or ""
        except Exception:  # outside a browser session (AppTest, bare mode)
            saved = ""
        st.session_state[_REVIEWER] = unquote(saved).strip()[:80] if isinstance(saved, str) else ""
    return st.session_state[_REVIEWER]


def set_reviewer_name(name: str) -> None:
    """Use ``name`` from now on and keep it for this browser (written by :func:`write_reviewer_cookie`)."""
    st.session_state[_REVIEWER] = (name or "").strip()[:80]
    st.session_state[_REVIEWER_PENDING] = True


def write_reviewer_cookie() -> None:
    """Store a just-changed reviewer name in this browser's cookie (a year; this site only). A few bytes of
    script in an st.html element: Streamlit can read cookies (st.context.cookies) but not set them."""
    if not st.session_state.pop(_REVIEWER_PENDING, False):
        return
    value = json.dumps(st.session_state.get(_REVIEWER, "")).replace("<", "\\u003c")
    st.html(f"<script>document.cookie = '{REVIEWER_COOKIE}=' + encodeURIComponent({value}) + "
            "'; path=/; max-age=31536000; SameSite=Strict';</script>", unsafe_allow_javascript=True)


def open_run_in_review(run_id: str) -> None:
    """Point this session's Review queue at one run (every status), from its first conversation."""
    for key in [k for k in st.session_state if str(k).startswith("review.f.")]:
        del st.session_state[key]  # the Review page rebuilds its filter widgets from the saved filter
    st.session_state["review.filter"] = {"status": "any", "run_id": run_id}
    st.session_state["review.current"] = None
    st.session_state["review.page"] = 1


def draw_polled(draw: Callable[[], None], active: bool, every_s: float = 1.0) -> None:
    """Draw ``draw`` as a fragment re-run every ``every_s`` seconds while ``active``, else once with the page.

    A panel whose buttons leave the page ("Open in Review") must not stay a timed fragment once its work is
    done: a timed re-run that reaches the server after ``st.switch_page`` blanks the page switched to.
    """
    if active:
        st.fragment(run_every=every_s)(draw)()
    else:
        draw()
