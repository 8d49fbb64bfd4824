"""The CLI's side of the HTTP API, for when a running server holds the data directory.

Standard-library ``urllib`` on purpose: a handful of JSON calls does not justify another runtime
dependency (httpx is only a test dependency).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


class ServerError(Exception):
    """The server refused (its ``detail`` is kept) or could not be reached."""

    def __init__(self, detail: str, status: int | None = None):
        super().__init__(detail)
        self.detail, self.status = detail, status


class ServerClient:
    def __init__(self, url: str, key: str | None = None, timeout_s: float = 60.0):
        self.url, self.key, self.timeout_s = url.rstrip("/"), key, timeout_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ServerError(f"{self.url}: {error_detail(exc)}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(f"cannot reach the server at {self.url}: {getattr(exc, 'reason', exc)}") from None

    def collection_id(self, id_or_name: str) -> int:
        """By numeric id or by name, as the local CLI resolves it."""
        if id_or_name.isdigit():
            try:
                return int(self.call("GET", f"/collections/{int(id_or_name)}")["id"])
            except ServerError as exc:
                if exc.status != 404:
                    raise
        return int(self.call("GET", f"/collections/by-name/{quote(id_or_name, safe='')}")["id"])


def error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return detail if isinstance(detail, str) else f"HTTP {exc.code} {exc.reason}"
