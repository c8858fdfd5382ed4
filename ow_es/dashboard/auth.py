"""Who may use the dashboard: a bearer token, same-origin writes, loopback without a token.

- With a token, every data route (``/api/*``, ``/metrics``) needs ``Authorization: Bearer
  TOKEN`` or basic auth with any user name and the token as password (compared in constant
  time). ``EventSource`` cannot set headers, so ``/api/stream`` also takes ``?token=``. The
  static page holds no data and is served to anyone (it asks for the token); so is
  ``/healthz``.
- Without a token the dashboard only serves loopback: a request whose ``Host`` is not a
  loopback name is refused (DNS rebinding would otherwise hand the data to any web page).
- State-changing requests from another site are refused: an ``Origin`` naming another host
  than ``Host``, or ``Sec-Fetch-Site: cross-site``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ow_es.dashboard.jsonio import error_response

PUBLIC_PATHS = ("/healthz",)
DATA_PREFIXES = ("/api/", "/metrics")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_ENV = "OW_ES_DASHBOARD_TOKEN"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header value (``[::1]:8080`` -> ``::1``)."""
    return urlsplit(f"//{host_header}").hostname or ""


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def presented_token(headers: dict[str, str], query: str, path: str) -> str | None:
    """The token a request presents: a bearer header, basic auth's password, or (only on the
    stream, for EventSource) ``?token=``."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    if path == "/api/stream":
        tokens = parse_qs(query).get("token")
        return tokens[0] if tokens else None
    return None


def cross_site(headers: dict[str, str]) -> bool:
    """True when a browser says the request comes from another site or origin."""
    origin = headers.get("origin")
    if origin:
        parts = urlsplit(origin)
        return origin == "null" or parts.netloc.lower() != headers.get("host", "").lower()
    return headers.get("sec-fetch-site", "").lower() == "cross-site"


class AuthMiddleware:
    """Pure ASGI (streams pass through untouched)."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        response = error_response(status, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="ow-es"'
        await response(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        if self.token is None and not is_loopback(host_name(headers.get("host", ""))):
            return 403, f"this dashboard serves loopback only: set {TOKEN_ENV} to serve others"
        if scope["method"] not in SAFE_METHODS and cross_site(headers):
            return 403, "cross-site request refused"
        if self.token is None or path in PUBLIC_PATHS or not path.startswith(DATA_PREFIXES):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        if not token_matches(self.token, presented_token(headers, query, path)):
            return 401, "authentication required: send the dashboard token as a bearer token"
        return None
