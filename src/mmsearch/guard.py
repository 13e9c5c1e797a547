"""What the HTTP server checks before a request reaches the API, and adds to every answer.

A pure ASGI middleware, so that it runs before FastAPI reads (and spools) a request body:

- **Host**: only loopback names, IP addresses and ``allowed_hosts``. A web page on
  ``evil.example`` whose name is re-pointed at 127.0.0.1 (DNS rebinding) sends
  ``Host: evil.example`` and is refused, so it cannot read a loopback server.
- **Credentials**: indexing needs the API token in an ``Authorization: Bearer`` header,
  checked before the body is read; reads need the read token (or the API token, or the
  login page's cookie) unless reads are open (loopback without a read token, or
  ``serve --public``). The cookie is HttpOnly and SameSite=Strict and carries an expiry and
  an HMAC keyed by the token, never the token itself.
- **Headers** on every answer: a CSP without inline scripts, ``nosniff`` (an uploaded
  GIF/HTML polyglot is never rendered as a page), no framing, no referrer.

Request body sizes are bounded by Starlette's own limiter (``max_body_size`` per route).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "mmsearch_session"
COOKIE_DAYS = 30
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

#: The page's policy: scripts, styles and images from this origin only (plus blob: and data:
#: images for the query preview), no plugins, no framing, forms post here only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: Swagger UI sets style attributes from script; its page alone allows inline styles.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

#: Paths anyone may reach: liveness, the login page and the page's own code.
PUBLIC_PREFIXES = ("/api/v1/health", "/login", "/logout", "/static/", "/docs-assets/")
PUBLIC_PATHS = frozenset({"/favicon.ico"})
WRITE_PREFIX = "/api/v1/index/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _host_of(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` -> ``::1``, ``a:80`` -> ``a``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class Access:
    """Who may do what: the tokens, and whether reads are open to anyone who can connect."""

    api_token: str | None
    read_token: str | None
    reads_open: bool
    allowed_hosts: frozenset[str] = frozenset()

    @property
    def read_tokens(self) -> list[str]:
        return [t for t in (self.read_token, self.api_token) if t]

    def host_allowed(self, header: str | None) -> bool:
        host = _host_of(header or "")
        return bool(host) and (host in LOOPBACK_NAMES or _is_ip(host) or host in self.allowed_hosts)

    def can_write(self, headers: Headers) -> bool:
        return self.api_token is not None and _matches(_bearer(headers), [self.api_token])

    def can_read(self, headers: Headers) -> bool:
        if self.reads_open or _matches(_bearer(headers), self.read_tokens):
            return True
        return any(cookie_valid(c, t) for c in _cookies(headers) for t in self.read_tokens)

    def login(self, token: str) -> str | None:
        """A cookie value for a correct read (or API) token, else None."""
        for known in self.read_tokens:
            if _matches(token, [known]):
                return make_cookie(known)
        return None


def _bearer(headers: Headers) -> str:
    value = headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def _matches(given: str, tokens: Iterable[str]) -> bool:
    """Constant-time comparison against each known token."""
    if not given:
        return False
    return any(secrets.compare_digest(given.encode(), t.encode()) for t in tokens)


def _cookies(headers: Headers) -> list[str]:
    out = []
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                out.append(value)
    return out


def _signature(token: str, expires: int) -> str:
    message = f"mmsearch-session:{expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def make_cookie(token: str, days: int = COOKIE_DAYS) -> str:
    expires = int(time.time()) + days * 86400
    return f"{expires}.{_signature(token, expires)}"


def cookie_valid(value: str, token: str) -> bool:
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return secrets.compare_digest(signature.encode(), _signature(token, int(expires)).encode())


class Guard:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _send_refusal(send, scope, *refusal)
            return
        path = scope.get("path", "")
        csp = DOCS_CSP if path == "/docs" else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [*SECURITY_HEADERS, (b"content-security-policy", csp.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) when the request may not go on, else None."""
        headers = Headers(scope=scope)
        if not self.access.host_allowed(headers.get("host")):
            return 400, "this server does not answer to that Host name (see --allowed-host)"
        path: str = scope.get("path", "")
        if path.startswith(WRITE_PREFIX):
            if self.access.api_token is None:
                return 403, "indexing over HTTP is disabled: set MMSEARCH_API_TOKEN"
            return None if self.access.can_write(headers) else (401, "missing or wrong API token")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        if self.access.can_read(headers):
            return None
        return 401, "sign in at /login or send Authorization: Bearer <read token>"


async def _send_refusal(send: Send, scope: Scope, status: int, reason: str) -> None:
    """A JSON error, or for a browser asking for the page, a redirect to the login page."""
    wants_page = scope.get("path") == "/" and scope.get("method") == "GET"
    if status == 401 and wants_page:
        headers = [(b"location", b"/login"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    body = json.dumps({"detail": reason}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
