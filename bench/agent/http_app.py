"""The agent's HTTP face: a Starlette app of its routes, behind the token check and the body deadlines.

Starlette routes and parses; uvicorn (``bench.agent.serving``) runs it. What neither does is here: a token check
with a limit on failures per client address, and deadlines for a request's body. Every refusal is its own status
with one line, ``{"error": ...}``, never Starlette's plain-text pages.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgecraft.bench.agent.limits import FailedAttempts, in_bytes
from edgecraft.bench.agent.protocol import MAX_MANIFEST_BYTES, OUTPUTS_FILE, PREFIX, RESULT_FILE

if TYPE_CHECKING:
    from edgecraft.bench.agent.server import Agent

_CHUNK = 1 << 20  # what an upload gathers before the thread pool writes it


class Refused(Exception):
    """A request the agent answers with an HTTP error status and ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.extra = extra


def _error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An error answer: one line, and the connection closed after it, so that a body the agent did not read
    (an upload refused from its Content-Length) is not read and thrown away for nothing."""
    line = " ".join(message.split())
    return JSONResponse({"error": line, **extra}, status, headers={"Connection": "close", **(headers or {})})


class TokenCheck:
    """Every request carries ``Authorization: Bearer TOKEN``, compared in constant time; an address that sent
    ``--max-token-failures`` wrong ones within a minute is answered 429 (even with the right one, which would
    otherwise tell a guesser it had found it) until the oldest of them is a minute old."""

    def __init__(self, app: ASGIApp, token: str, failures: FailedAttempts):
        self.app = app
        self.expected = b"Bearer " + token.encode()
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        address = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.failures.retry_after(address)
        if wait is not None:
            seconds = math.ceil(wait)
            return _error(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many wrong tokens from {address}: try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        if not hmac.compare_digest(dict(scope["headers"]).get(b"authorization", b""), self.expected):
            self.failures.failed(address)
            return _error(HTTPStatus.UNAUTHORIZED, "missing or wrong token: send 'Authorization: Bearer TOKEN'")
        return None


class BodyDeadlines:
    """Each chunk of a request's body must arrive within ``--idle-timeout`` seconds and the whole body within
    ``--request-timeout``, else 408: uvicorn bounds neither, so a client sending a byte a minute would hold its
    connection, its place under --max-connections and an upload's disk reservation for ever."""

    def __init__(self, app: ASGIApp, idle_s: float, request_s: float):
        self.app = app
        self.idle_s = idle_s
        self.request_s = request_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_s
        body_done = False

        async def bounded_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards only a disconnect can come, whenever it comes
                return await receive()
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(min(self.idle_s, left)):
                    message = await receive()
            except TimeoutError:
                if left <= self.idle_s:
                    reason = f"took longer than {self.request_s:g} s (the agent's --request-timeout)"
                else:
                    reason = f"stalled for {self.idle_s:g} s (the agent's --idle-timeout)"
                raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"the request's body {reason}") from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


def _content_length(request: Request, limit: int, whose: str) -> int:
    """The request's Content-Length (h11 has checked that it is a plain number), decided before a byte of the
    body is read."""
    text = request.headers.get("content-length")
    if text is None:
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
    if int(text) > limit:
        raise Refused(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{int(text)} bytes is over this agent's limit of {limit} bytes{whose}"
        )
    return int(text)


def application(agent: Agent, token: str) -> Starlette:
    """The agent's routes (``bench.agent.protocol`` describes them) behind the token check and body deadlines.

    Endpoints written as plain functions run in Starlette's thread pool (disk, .npz and model checks never hold up
    the event loop); the upload is read asynchronously and written to disk from the pool a megabyte at a time."""
    limits = agent.limits

    async def put_blob(request: Request) -> Response:
        length = _content_length(request, in_bytes(limits.max_upload_mb), " (its --max-upload-mb)")
        try:
            upload = await run_in_threadpool(agent.upload, request.path_params["name"], length)
        except Refused:
            # The body is read and dropped before the refusal (it is within --max-upload-mb): a client still
            # sending it would otherwise meet a closed connection, and a reset instead of the reason.
            try:
                async for _ in request.stream():
                    pass
            except ClientDisconnect:
                pass
            raise
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= _CHUNK:
                    await run_in_threadpool(upload.write, buffer)
                    buffer.clear()
            await run_in_threadpool(upload.write, buffer)
            return JSONResponse(await run_in_threadpool(upload.finish))
        except ClientDisconnect:
            raise Refused(HTTPStatus.BAD_REQUEST, f"the body ended after {upload.received} of {length} bytes") from None
        finally:
            await run_in_threadpool(upload.discard)

    def has_blob(request: Request) -> Response:
        name = request.path_params["name"]
        if not agent.has_blob(name):
            raise Refused(HTTPStatus.NOT_FOUND, f"no blob {name!r} on this agent")
        return JSONResponse({})

    async def submit(request: Request) -> Response:
        _content_length(request, MAX_MANIFEST_BYTES, "")
        try:
            manifest = json.loads(await request.body())
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None
        return JSONResponse(await run_in_threadpool(agent.submit, manifest), HTTPStatus.ACCEPTED)

    def result(request: Request) -> Response:
        path = agent.finished_file(request.path_params["job"], RESULT_FILE)
        return Response(path.read_bytes(), media_type="application/json")

    def outputs(request: Request) -> Response:
        return FileResponse(
            agent.finished_file(request.path_params["job"], OUTPUTS_FILE), media_type="application/octet-stream"
        )

    routes = [
        Route(f"{PREFIX}/device", lambda request: JSONResponse(agent.describe()), methods=["GET"]),
        Route(f"{PREFIX}/blobs/{{name}}", put_blob, methods=["PUT"]),
        Route(f"{PREFIX}/blobs/{{name}}", has_blob, methods=["HEAD"]),
        Route(f"{PREFIX}/jobs", submit, methods=["POST"]),
        Route(f"{PREFIX}/jobs/{{job}}", lambda request: JSONResponse(agent.status(request.path_params["job"]))),
        Route(
            f"{PREFIX}/jobs/{{job}}",
            lambda request: JSONResponse(agent.delete(request.path_params["job"])),
            methods=["DELETE"],
        ),
        Route(f"{PREFIX}/jobs/{{job}}/result", result),
        Route(f"{PREFIX}/jobs/{{job}}/outputs", outputs),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TokenCheck, token=token, failures=FailedAttempts(limits.max_token_failures)),
            Middleware(BodyDeadlines, idle_s=limits.idle_timeout, request_s=limits.request_timeout),
        ],
        exception_handlers={Refused: _refused, HTTPException: _no_route, Exception: _bug},
    )
    app.router.redirect_slashes = False  # a path is a name or it is not: no redirects to guess with
    return app


def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return _error(exc.status, str(exc), exc.headers, **exc.extra)


def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, as JSON lines like every other refusal."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = ", ".join(sorted((exc.headers or {}).get("Allow", "").split(", ")))
        return _error(exc.status_code, f"{path} takes {allowed}, not {request.method}", exc.headers)
    if exc.status_code == HTTPStatus.NOT_FOUND:
        return _error(exc.status_code, f"no such endpoint {path!r}")
    return _error(exc.status_code, exc.detail, exc.headers)


def _bug(request: Request, exc: Exception) -> Response:
    """An agent bug answers 500 with one line (uvicorn logs the traceback) and the agent keeps serving."""
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the agent failed: {type(exc).__name__}: {exc}")
