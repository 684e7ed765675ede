"""Who may see the dashboard: the holder of the token in ``<data dir>/dashboard.token`` (0600).

As Jupyter does, the URL printed at start carries the token (``?token=``); the first visit sets a
cookie (HttpOnly, SameSite=Strict) so the page's own requests and its websocket need nothing more;
scripts may send ``Authorization: Bearer <token>`` instead. Anything else gets 401.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

TOKEN_FILE = "dashboard.token"
COOKIE = "steadyhand_dashboard"


class TokenError(RuntimeError):
    pass


def load_token(data_dir: str | Path, create: bool = True) -> str:
    """The token, created 0600 on first use; a file others can read is refused (as the operator secret)."""
    path = Path(data_dir) / TOKEN_FILE
    if not path.exists():
        if not create:
            raise TokenError(f"no dashboard token at {path}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TokenError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    token = path.read_text().strip()
    if not token:
        raise TokenError(f"{path} is empty")
    return token


def presented(query: Mapping[str, str], headers: Mapping[str, str], cookies: Mapping[str, str]) -> str:
    """The token a request presents: ``?token=``, then the bearer header, then the cookie."""
    if query.get("token"):
        return query["token"]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return cookies.get(COOKIE, "")


def valid(token: str, given: str) -> bool:
    return bool(given) and hmac.compare_digest(token.encode(), given.encode())
