"""ASGI guards in front of every route: optional HTTP basic auth and a request body size limit."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

OPEN_PATHS = {"/health"}


class Guard:
    """401 without valid basic auth (when configured; /health stays open, but says less), 413 for bodies over the limit.

    The body is read here (bounded) and replayed to the app, so an oversized or endless body never reaches JSON
    parsing and the app sees the limit enforced even without a Content-Length header.
    """

    def __init__(self, app: Any, max_body_bytes: int, user: str | None = None, password: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.credentials = (user.encode(), password.encode()) if user and password else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        authorized = self.credentials is None or self._authorized(headers)
        if not authorized and scope.get("path") not in OPEN_PATHS:
            await _reply(send, 401, "missing or wrong credentials (HTTP basic auth)", [(b"www-authenticate", b"Basic")])
            return
        # The open routes say less to a caller without credentials (request.state.authorized).
        scope.setdefault("state", {})["authorized"] = authorized
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
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

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
