"""Prefect API URLs as the operator shows and checks them.

`redact` is the only form of a URL that reaches a status, an Event or a log line: a
pool's URL may carry `user:password@` (or a token in its query), which the pool's
readers must not learn from the operator. `allowed` matches a URL against the
install-time allow-list (config.py) by its parts, not as a string: a plain prefix
test would let `http://prefect.svc@evil.example/` pass for `http://prefect.svc`. An
empty allow-list allows nothing: the operator sends a pool's API key only where the
platform engineer said it may.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def redact(url: str) -> str:
    """The URL without credentials: userinfo and query replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def check_prefix(entry: str) -> str | None:
    """Why an allow-list entry is not usable, or None."""
    try:
        parts = urlsplit(entry)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{redact(entry)!r} is not a URL ({exc})"
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return f"{redact(entry)!r} is not an http(s) URL with a host"
    return None


def allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `url` is under one of `prefixes` (scheme, host and port equal, path
    under the prefix's path at a segment boundary). No prefixes: no URL."""
    try:
        parts = urlsplit(url)
        origin = _origin(parts)
    except ValueError:
        return False
    segments = unquote(parts.path).split("/")
    if "." in segments or ".." in segments:  # /api/../admin is not under /api
        return False
    path = parts.path.rstrip("/") + "/"
    for prefix in prefixes:
        allowed_parts = urlsplit(prefix)
        if _origin(allowed_parts) == origin and path.startswith(
            allowed_parts.path.rstrip("/") + "/"
        ):
            return True
    return False
