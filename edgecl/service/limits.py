"""Pure ASGI middleware: the request body size limit and the bearer token.

Both answer before the application reads anything: the size limit refuses a declared
Content-Length over the limit at once and stops a streamed (chunked) body as soon as the
bytes received pass it, so a large body is never buffered whole.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the limit."""


async def send_error(send: Any, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> str:
        return (f"request body over the limit of {self.max_bytes / 2**20:g} MiB "
                "(service.max_body_mib); send fewer or smaller images per request")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await send_error(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await send_error(send, 413, self.too_large())
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, self.too_large())


class BearerToken:
    """Every request but ``GET /`` (the status page, which holds no data) needs
    ``Authorization: Bearer <token>``; compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD")
                                       and scope["path"] == "/"):
            await self.app(scope, receive, send)
            return
        given = header(scope, b"authorization") or b""
        if not hmac.compare_digest(given, self.expected):
            what = "wrong token" if given else "missing token"
            await send_error(send, 401, f"{what}: send 'Authorization: Bearer <token>' (the "
                             "token the learner was started with)",
                             [(b"www-authenticate", b'Bearer realm="edgecl"')])
            return
        await self.app(scope, receive, send)
