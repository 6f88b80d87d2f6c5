"""What a browser session may reach on the server: which key goes to which URL, which paths it may name.

The app is one server process shared by everyone who can open it, so a value typed in a browser is treated
as coming from a stranger: a URL typed there never receives the server's key, and a path typed there must
lie under an allowed root (the data dir, ``sample_data/``, folders listed in GROUNDWORK_ALLOWED_ROOTS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import ValidationError

ROOT = Path(__file__).resolve().parent.parent


def allowed_roots(settings: Settings) -> list[Path]:
    """Folders whose contents paths typed in the browser may name (symlinks resolved)."""
    roots = [settings.data_path, ROOT / "sample_data"]
    roots += [Path(p).expanduser() for p in settings.allowed_roots.split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def confine_path(typed: str | Path, settings: Settings, what: str) -> Path:
    """A path typed in the browser, resolved, if it lies under an allowed root.

    Relative paths are taken from the app's folder (where ``sample_data/`` is). ``..`` is refused outright,
    and symlinks are resolved before the check, so neither can lead out of the roots.

    Args:
        typed: the path as typed.
        what: what it is for, for the message ("ingest folder", "export folder", "GGUF file").

    Raises:
        ValidationError: the path uses ``..`` or resolves outside every allowed root.
    """
    raw = str(typed).strip()
    if not raw:
        raise ValidationError(f"The {what} is empty: type a path under the data dir or sample_data/.")
    path = Path(raw).expanduser()
    if ".." in path.parts:
        raise ValidationError(f"The {what} {raw} uses '..': type the path without it, under one of the allowed "
                              f"folders ({_roots_text(settings)}).")
    resolved = (path if path.is_absolute() else ROOT / path).resolve()
    for root in allowed_roots(settings):
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    via = f" (a symlink to {resolved})" if resolved != (path if path.is_absolute() else ROOT / path).absolute() else ""
    raise ValidationError(f"The {what} {raw}{via} is outside the folders the browser may use "
                          f"({_roots_text(settings)}); add its folder to GROUNDWORK_ALLOWED_ROOTS on the server to "
                          f"allow it.")


def _roots_text(settings: Settings) -> str:
    return ", ".join(str(r) for r in allowed_roots(settings))


def _same_url(a: str, b: str) -> bool:
    return (a or "").strip().rstrip("/").lower() == (b or "").strip().rstrip("/").lower()


def session_settings(base: Settings, choices: dict[str, Any], typed_openai_key: str | None = None) -> Settings:
    """The server's settings with a browser session's choices, and keys only where they belong.

    The server's OpenAI-compatible key goes only to the server's configured base URL; a base URL typed in
    the browser gets only a key typed in the same session (or none). A GGUF path typed there must be under an
    allowed root. (The Gemini endpoint cannot be changed from the browser, so its key cannot be sent away.)

    Raises:
        ValidationError: a typed GGUF path outside the allowed roots.
    """
    changes = {k: v for k, v in choices.items() if v not in (None, "")}
    if changes.get("local_model_path") and changes["local_model_path"] != base.local_model_path:
        changes["local_model_path"] = str(confine_path(changes["local_model_path"], base, "GGUF file"))
    session = base.replace(**changes) if changes else base
    if _same_url(session.openai_base_url, base.openai_base_url):
        key = typed_openai_key or base.openai_api_key
    else:
        key = typed_openai_key or ""
    return session.replace(openai_api_key=key) if key != session.openai_api_key else session
