"""HEAD answered like GET without a body (RFC 9110 section 9.3.2), for every GET route at once."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Pure ASGI middleware: a HEAD request runs as the GET of the same URL and its body is dropped, so the
    status and headers (``Content-Length`` included) are the GET's. FastAPI routes declare GET only, and
    link checkers and mail scanners probe links with HEAD. It changes nothing a GET would not: every GET
    of ours is safe (tests/test_archive.py checks that GET and HEAD on every link in every message change
    nothing). A path without GET still answers 405.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)
