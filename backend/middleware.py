"""ASGI guards in front of every route: optional HTTP basic auth, the webhook secret, a request body size limit
and a JSON nesting limit."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from typing import Any

import numpy as np

from studio.provision import WEBHOOK_SECRET_HEADER

OPEN_PATHS = {"/health"}
WEBHOOK_PATH = "/webhook"
MAX_JSON_DEPTH = 64  # Label Studio's payloads nest about 8 deep; deeper ones would exhaust recursion further in
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class Guard:
    """401 without valid basic auth (when configured; /health stays open, but says less), 413 for bodies over the limit,
    422 for JSON nested deeper than MAX_JSON_DEPTH.

    With a webhook secret configured, /webhook needs its header (X-Workbench-Webhook-Secret) or the basic-auth
    credentials. `request.state.operator` says whether the caller gave the basic-auth credentials (operator actions
    such as forced training need them).

    The body is read here (bounded) and replayed to the app, so an oversized or endless body never reaches JSON
    parsing and the app sees the limit enforced even without a Content-Length header.
    """

    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        user: str | None = None,
        password: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.credentials = (user.encode(), password.encode()) if user and password else None
        self.webhook_secret = webhook_secret.encode() if webhook_secret else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        operator = self.credentials is not None and self._authorized(headers)
        authorized = self.credentials is None or operator
        if scope.get("path") == WEBHOOK_PATH and self.webhook_secret is not None:
            authorized = operator or self._has_webhook_secret(headers)
            if not authorized:
                message = f"missing or wrong {WEBHOOK_SECRET_HEADER} header (WORKBENCH_WEBHOOK_SECRET)"
                await _reply(send, 401, message)
                return
        if not authorized and scope.get("path") not in OPEN_PATHS:
            await _reply(send, 401, "missing or wrong credentials (HTTP basic auth)", [(b"www-authenticate", b"Basic")])
            return
        # The open routes say less to a caller without credentials (request.state.authorized).
        state = scope.setdefault("state", {})
        state["authorized"] = authorized
        state["operator"] = operator
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _reply(send, 413, f"request body over {self.max_body_bytes} bytes (WORKBENCH_MAX_BODY_BYTES)")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reply(send, 413, f"request body over {self.max_body_bytes} bytes (WORKBENCH_MAX_BODY_BYTES)")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if json_depth(body) > MAX_JSON_DEPTH:
            await _reply(send, 422, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _has_webhook_secret(self, headers: dict[bytes, bytes]) -> bool:
        assert self.webhook_secret is not None
        given = headers.get(WEBHOOK_SECRET_HEADER.lower().encode(), b"")
        return hmac.compare_digest(given, self.webhook_secret)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self.credentials is not None
        header = headers.get(b"authorization", b"")
        scheme, _, encoded = header.partition(b" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            user, password = b"", b""
        # Compare both parts every time, in constant time, so timing reveals neither.
        user_ok = secrets.compare_digest(user, self.credentials[0])
        password_ok = secrets.compare_digest(password, self.credentials[1])
        return scheme.lower() == b"basic" and user_ok and password_ok


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count); vectorised, so a
    16 MB body takes milliseconds."""
    if not body or (b"[" not in body and b"{" not in body):
        return 0
    codes = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    return int(np.cumsum(opens.view(np.int8) - closes.view(np.int8), dtype=np.int32).max(initial=0))


async def _reply(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})
