"""uvicorn as the agent runs it: its listening socket, TLS, connection limits, and the one deadline it lacks.

uvicorn times out an idle keep-alive connection, but only between requests, and it stops that clock at the first
byte of the next one: a client that connects and sends nothing, or a request line and then a header a minute
(slow loris), holds its connection, and a place under ``--max-connections``, for ever. ``HeadTimeoutProtocol``
closes a connection whose request head is not complete ``--header-timeout`` seconds after the connection (or the
first byte of its next request). The TLS handshake before it is bounded by asyncio (60 s).
"""

from __future__ import annotations

import asyncio
import socket
from typing import ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgecraft.bench.agent.limits import Limits
from edgecraft.bench.agent.tls import Identity

# Connections the kernel holds while the agent accepts: far more than clients ever open at once, so that a burst
# of them (40 submissions at the same moment) waits instead of being reset (Linux caps it at net.core.somaxconn).
BACKLOG = 2048
_GRACEFUL_SHUTDOWN_S = 5


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive within ``header_timeout_s``."""

    header_timeout_s: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[HeadTimeoutProtocol]:
        """A subclass with its own timeout: uvicorn makes each connection's protocol from a class alone."""
        return type("AgentHttpProtocol", (cls,), {"header_timeout_s": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._start_head_clock()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # its head is in (h11 has moved on to the body or past it)
            self._stop_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _start_head_clock(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts so that the agent can print its real port (port 0: any)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def configure(app: ASGIApp, limits: Limits, identity: Identity | None) -> uvicorn.Config:
    """uvicorn's settings for the agent, loaded (the TLS context among them) so that a problem shows before the
    agent says it listens."""
    config = uvicorn.Config(
        app,
        http=HeadTimeoutProtocol.with_timeout(limits.header_timeout),
        loop="asyncio",
        ws="none",
        lifespan="off",
        log_config=None,  # the edgecraft command line's logging (stderr), not uvicorn's own handlers on stdout
        log_level="warning",
        access_log=False,
        # Not behind a proxy: the address that failed tokens are counted by is the peer's, never a header's.
        proxy_headers=False,
        server_header=False,
        limit_concurrency=limits.max_connections,
        backlog=BACKLOG,
        timeout_keep_alive=limits.idle_timeout,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        ssl_certfile=identity.certificate if identity else None,
        ssl_keyfile=identity.key if identity else None,
    )
    config.load()
    return config


def run(config: uvicorn.Config, listener: socket.socket) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn then lets requests under way finish for a few seconds)."""
    uvicorn.Server(config).run(sockets=[listener])
