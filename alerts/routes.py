"""Alert routing (DESIGN §9): which apprise URLs get which severities, and URL masking.

Routes come from ``[alerts] urls`` and the ``STEADYHAND_ALERT_URLS`` environment variable, each
optionally prefixed with a minimum severity (``critical:mailto://...``). Secrets live in apprise
URLs (SMTP passwords, webhook tokens), so a URL is never logged or put in an exception:
:func:`mask_url` keeps the scheme and (when it really is a host name) the host.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import apprise
from apprise.utils.cwe312 import cwe312_word
from steadyhand.config import AlertSettings
from steadyhand.domain import Severity

ALERT_URLS_ENV = "STEADYHAND_ALERT_URLS"
ENV_MIN_SEVERITY = Severity.HIGH  # URLs from the environment get HIGH and above

_SEVERITY_NAMES = "info|all|warning|high|critical"
# "critical:mailto://..." -- the (?!//) keeps a scheme that happens to be a severity name a URL.
_PREFIX_RE = re.compile(rf"^\s*({_SEVERITY_NAMES})\s*:(?!//)\s*(.*)$", re.IGNORECASE | re.DOTALL)
# Split the environment variable only where a new URL starts, so a comma inside a URL's query
# (``?to=a@x.com,b@y.com``) does not cut it in two.
_ENV_SPLIT_RE = re.compile(rf"[\s,;]+(?=(?:(?:{_SEVERITY_NAMES})\s*:)?[a-z0-9+.-]+://)", re.IGNORECASE)
_HOST_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def parse_severity(value: str | int | Severity) -> Severity:
    """``"critical"``/``"HIGH"``/``"all"`` (= INFO)/``30``/``Severity.HIGH`` -> Severity."""
    if isinstance(value, Severity):
        return value
    if isinstance(value, int):
        return Severity(value)
    text = str(value).strip()
    if text.isdigit():
        return Severity(int(text))
    if text.lower() == "all":
        return Severity.INFO
    try:
        return Severity[text.upper()]
    except KeyError:
        raise ValueError(f"unknown alert severity {value!r} (info, warning, high, critical, all)") from None


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


def _looks_like_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    # A dotted name with a letters-only TLD; anything else may be a token (slack://T000/...).
    if len(labels) < 2 or not labels[-1].isalpha():
        return False
    if not all(_HOST_LABEL_RE.match(label) for label in labels):
        return False
    # apprise's own CWE-312 heuristic: random-looking words are treated as secrets.
    return all(cwe312_word(label) == label for label in labels)


def mask_url(url: str) -> str:
    """``scheme://host[:port]`` for messages and logs; user, password, path and query dropped."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme or "?"
        host = parts.hostname or ""
    except ValueError:
        return "<unparseable URL>"
    try:
        port = parts.port
    except ValueError:  # e.g. tgram://123456:TOKEN/... puts a token where the port goes
        port = None
    shown = host if host and _looks_like_host(host) else "***"
    if shown != "***" and port:
        shown = f"{shown}:{port}"
    return f"{scheme}://{shown}"


@dataclass(frozen=True, repr=False)
class Route:
    """One apprise URL and the lowest severity it receives."""

    url: str
    min_severity: Severity

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:  # the URL holds secrets: never show it whole
        return f"Route({self.safe_url!r}, {self.min_severity.name})"


def _route(entry: str, default: Severity, origin: str) -> Route | None:
    entry = entry.strip()
    if not entry:
        return None
    severity = default
    match = _PREFIX_RE.match(entry)
    if match:
        severity = parse_severity(match.group(1))
        entry = match.group(2).strip()
    if apprise.Apprise.instantiate(entry) is None:
        raise ValueError(f"{origin}: unusable apprise URL {mask_url(entry)!r} (credentials hidden)")
    return Route(entry, severity)


def split_urls(text: str) -> list[str]:
    """Split ``STEADYHAND_ALERT_URLS`` (spaces or commas between URLs) into entries."""
    return [part.strip() for part in _ENV_SPLIT_RE.split(text.strip()) if part.strip()]


def alert_urls(settings: AlertSettings, environ: Mapping[str, str] | None = None) -> list[Route]:
    """Every configured route, validated with apprise.

    ``settings.urls`` get ``settings.min_severity`` and ``STEADYHAND_ALERT_URLS`` gets HIGH and above;
    either may carry a ``critical:``/``high:``/``warning:``/``info:``/``all:`` prefix. A URL given
    twice becomes one route with the lower threshold (so it is not sent twice).
    Raises ``ValueError`` (naming the URL, secrets masked) for a URL apprise cannot use.
    """
    env = os.environ if environ is None else environ
    default = parse_severity(settings.min_severity)
    candidates = [_route(u, default, "alerts.urls") for u in settings.urls]
    candidates += [
        _route(u, ENV_MIN_SEVERITY, ALERT_URLS_ENV) for u in split_urls(env.get(ALERT_URLS_ENV, ""))
    ]
    merged: dict[str, Severity] = {}
    for route in candidates:
        if route is not None:
            merged[route.url] = min(route.min_severity, merged.get(route.url, route.min_severity))
    return [Route(url, severity) for url, severity in merged.items()]
