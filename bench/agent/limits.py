"""The agent's limits: each one a flag of ``edgecraft agent serve`` with a default, and what a client reads of them.

Standard library only: the ``edgecraft`` command line builds its flags from ``Limits`` on every start.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MIB = 1 << 20
_PRUNE_ABOVE = 10_000


def _limit(default: float, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Limits:
    """Every bound the agent puts on what clients send it; a field ``max_array_mb`` is the flag ``--max-array-mb``."""

    max_upload_mb: float = _limit(512, "largest file a client may upload, in MiB (413 past it)")
    max_array_mb: float = _limit(256, "largest input array, inflated, in MiB: read from its .npy header first (413)")
    max_job_mb: float = _limit(512, "all input arrays of one job together, inflated, in MiB (413 past it)")
    max_rank: int = _limit(8, "most dimensions an input array may have (413 past it)")
    max_queue: int = _limit(16, "most jobs waiting to run (a submission past it is answered 429)")
    max_disk_mb: float = _limit(4096, "uploads and jobs in the agent's folder, in MiB (507 past it)")
    blob_ttl: float = _limit(3600, "seconds an upload that no job uses is kept")
    job_timeout: float = _limit(3600, "seconds a job may measure, every repetition together")
    max_connections: int = _limit(64, "connections at once (requests past it are answered 503)")
    header_timeout: float = _limit(10, "seconds a client has to send a request's line and headers")
    request_timeout: float = _limit(600, "seconds a client has to send a whole request body (an upload)")
    idle_timeout: int = _limit(15, "seconds a connection may stay silent, between requests or within a body")
    max_token_failures: int = _limit(10, "wrong tokens per client address per minute; more are answered 429")

    def __post_init__(self) -> None:
        for name, value in self.by_flag().items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a positive number, not {value:g}")

    @staticmethod
    def fields() -> list[tuple[str, type, float, str]]:
        """Each limit as (attribute, int or float, default, help), in the order ``--help`` lists them."""
        defaults, types = Limits(), typing.get_type_hints(Limits)
        return [
            (spec.name, types[spec.name], getattr(defaults, spec.name), spec.metadata["help"])
            for spec in dataclasses.fields(Limits)
        ]

    def by_flag(self) -> dict[str, float]:
        """``{"max-upload-mb": 512, ...}``: how ``GET /v1/device`` reports them (``agent.limits``)."""
        return {spec.name.replace("_", "-"): getattr(self, spec.name) for spec in dataclasses.fields(self)}


def in_bytes(mib: float) -> int:
    return int(mib * MIB)


class FailedAttempts:
    """Wrong tokens per client address in the last ``window_s`` seconds; an address past ``limit`` waits.

    Hand-written (a deque per address): the maintained ASGI rate limiters need extra dependencies (a storage
    backend, a framework of their own) that an edge box should not have to install for twenty lines. Used from the
    event loop only, so it needs no lock; an address is forgotten once its failures age out."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None if it may now."""
        failures = self._recent(address)
        if len(failures) < self.limit:
            return None
        return failures[0] + self.window_s - time.monotonic()

    def failed(self, address: str) -> None:
        if len(self._failures) > _PRUNE_ABOVE:  # addresses that failed once and never came back
            for known in list(self._failures):
                self._recent(known)
        self._failures.setdefault(address, deque()).append(time.monotonic())

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= time.monotonic() - self.window_s:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures
