"""The table of targets: adding a runtime is one new module in ``targets/runtimes/`` that calls ``register``."""

from __future__ import annotations

from edgecraft.core.registry import Registry
from edgecraft.targets.base import Target

RUNTIMES: Registry[type[Target]] = Registry(
    "runtime", "runtimes", key=lambda cls: cls.runtime, package="edgecraft.targets.runtimes"
)
register = RUNTIMES.register


def runtimes() -> dict[str, type[Target]]:
    """All registered runtimes by name, sorted."""
    return RUNTIMES.items()


def get(runtime: str) -> Target:
    """An instance of the runtime called ``runtime``; ``KeyError`` lists the known ones."""
    return RUNTIMES.get(runtime)()
