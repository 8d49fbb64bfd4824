"""The front door: Host allow-list, cross-origin refusal, API keys and what each key may touch.

One ASGI middleware, so that every route (also unknown paths) goes through the same rules. Only
/healthz, the web page's shell and assets, and the API docs (which hold no data: the page signs in
with a key and sends it on every API call) answer without a key. The rules per route:

* GET/HEAD and search need a ``read`` key, creating or deleting a collection ``admin``, anything
  else ``write``;
* a key limited to some collections gets the very 404 an absent collection (or its job) gets;
* state-changing requests whose ``Origin`` is neither the server itself nor in ``PAS_CORS_ORIGINS``
  are refused (a multipart POST from a web page skips the CORS preflight);
* the ``Host`` header must be in ``PAS_ALLOWED_HOSTS`` (a DNS-rebinding page sends its own name).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.routing import iter_route_contexts
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service import api_keys
from service.api_keys import OPEN, Principal

PUBLIC_PATHS = {"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
PUBLIC_PREFIXES = ("/ui/", "/docs-assets/")  # the page's and the docs' static files
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
READ_ONLY_POSTS = {"/collections/{collection_id}/search", "/collections/{collection_id}/search/image"}
ADMIN_ROUTES = {("POST", "/collections"), ("DELETE", "/collections/{collection_id}")}
MAX_ID = 2**63 - 1


class ExposureRefused(Exception):
    """Serving on a non-loopback address without any API key (and auth not turned off)."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth_disabled: bool, keys_exist: bool) -> None:
    if not auth_disabled and not keys_exist and not is_loopback(host):
        raise ExposureRefused(
            f"refusing to serve on {host} without an API key: create one with `prompt-adapters keys create "
            f"--name NAME --scope admin`, or turn authentication off explicitly (PAS_AUTH_DISABLED=1 / --no-auth)")


def required_scope(method: str, path_template: str) -> str:
    if method in SAFE_METHODS or (method == "POST" and path_template in READ_ONLY_POSTS):
        return "read"
    if (method, path_template) in ADMIN_ROUTES:
        return "admin"
    return "write"


def principal_of(request: Request) -> Principal:
    return getattr(request.state, "principal", OPEN)


# Handlers that list collections filter by it: a limited key sees only its own.
PrincipalDep = Annotated[Principal, Depends(principal_of)]


def _small_int(raw) -> int | None:
    text = str(raw)
    if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_ID:
        return int(text)
    return None


class AccessGuard:
    def __init__(self, app: ASGIApp, settings):
        self.app = app
        self.settings = settings
        self.allowed_hosts = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        self.cors_origins = {o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()}
        self._keys_seen = False  # keys are never deleted, only revoked: once seen, always required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]

        host = headers.get("host", "")
        if not self._host_allowed(host):
            return await reply(send, 400, "bad_host", "this Host is not served here (see PAS_ALLOWED_HOSTS)")
        origin = headers.get("origin")
        if origin is not None and method not in SAFE_METHODS and not self._origin_allowed(origin, host):
            return await reply(send, 403, "cross_origin", "cross-origin request refused (see PAS_CORS_ORIGINS)")
        if scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)

        ctx = getattr(scope["app"].state, "context", None)
        principal = OPEN
        if ctx is not None and not self.settings.auth_disabled:
            # One trip to the thread pool for the database work of the whole check.
            outcome = await run_in_threadpool(self._check_key, ctx, scope, headers.get("authorization", ""))
            if not isinstance(outcome, Principal):
                return await reply(send, *outcome)
            principal = outcome
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _check_key(self, ctx, scope: Scope, authorization: str) -> Principal | tuple:
        """The caller's principal, or (status, code, detail, headers) to refuse with."""
        if not self._keys_exist(ctx):
            return OPEN
        challenge = {"www-authenticate": "Bearer"}
        token = _bearer(authorization)
        if token is None:
            return 401, "unauthorized", "an API key is required: Authorization: Bearer <key>", challenge
        principal = self._authenticate(ctx, token)
        if principal is None:
            return 401, "unauthorized", "invalid or revoked API key", challenge
        refusal = self._authorize(ctx, scope, principal)
        return principal if refusal is None else refusal

    def _host_allowed(self, host: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        name = host_name(host)
        return name is not None and name.lower() in self.allowed_hosts

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/")
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return bool(parts.netloc) and parts.netloc.lower() == host.lower()  # the server's own pages

    def _keys_exist(self, ctx) -> bool:
        if not self._keys_seen:
            with ctx.session() as session:
                self._keys_seen = api_keys.keys_exist(session)
        return self._keys_seen

    @staticmethod
    def _authenticate(ctx, token: str) -> Principal | None:
        with ctx.session() as session:
            return api_keys.authenticate(session, token)

    @staticmethod
    def _authorize(ctx, scope: Scope, principal: Principal) -> tuple | None:
        """None when allowed, else (status, code, detail) to answer."""
        route_path, params = None, {}
        for route in iter_route_contexts(scope["app"].routes):
            match, child = route.matches(scope)
            if match is Match.FULL:
                route_path, params = route.path, child.get("path_params", {})
                break
        if route_path is None:  # unknown path or method: the app answers 404/405 itself
            return None
        needed = required_scope(scope["method"], route_path)
        if not principal.allows_scope(needed):
            return 403, "forbidden", f"this key's scope ({principal.scope}) does not allow this; it needs {needed}"
        if principal.collection_ids is None:
            return None
        collection_id = _small_int(params["collection_id"]) if "collection_id" in params else None
        if collection_id is not None and not principal.sees(collection_id):
            return 404, "not_found", f"collection {collection_id} not found"
        job_id = _small_int(params["job_id"]) if "job_id" in params else None
        if job_id is not None:
            from service.models import TuningJob

            with ctx.session() as session:
                job = session.get(TuningJob, job_id)
            if job is not None and not principal.sees(job.collection_id):
                return 404, "not_found", f"job {job_id} not found"
        return None


def host_name(host: str) -> str | None:
    """The name in a Host header ("name", "name:port", "[v6]:port"), or None when it is not that shape."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[1:end], host[end + 1:]) if end > 0 else ("", "")
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if not name or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
        return None
    return name


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def reply(send: Send, status: int, code: str, detail: str, extra_headers: dict | None = None) -> None:
    """A JSON error straight from the middleware; the request body (if any) is never read."""
    body = json.dumps({"detail": detail, "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
