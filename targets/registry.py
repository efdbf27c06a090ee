"""The table of targets: adding a runtime is one new module in ``targets/runtimes/`` that calls ``register``."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from targets.base import Target

_TARGETS: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: make ``cls`` available to recipes as ``<cls.runtime>:<device>``."""
    if cls.runtime in _TARGETS and _TARGETS[cls.runtime] is not cls:
        raise ValueError(f"runtime {cls.runtime!r} is registered twice")
    _TARGETS[cls.runtime] = cls
    return cls


@functools.cache
def _discover() -> None:
    """Import every module of ``targets.runtimes`` once per process (not "while the table is empty": a runtime
    module imported directly would otherwise hide the others)."""
    import targets.runtimes as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def runtimes() -> dict[str, type[Target]]:
    """All registered runtimes by name, sorted."""
    _discover()
    return dict(sorted(_TARGETS.items()))


def get(runtime: str) -> Target:
    """An instance of the runtime called ``runtime``; ``KeyError`` lists the known ones."""
    table = runtimes()
    if runtime not in table:
        raise KeyError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(table)}")
    return table[runtime]()
