"""The one registry implementation: passes, runtimes, evaluators and model formats are each a ``Registry``.

A plug-in is one module in its registry's package that decorates its class with ``register``; the registry imports
every module of that package once, on first use, so nothing has to list the plug-ins (timm's ``@register_model``
and ``list_models``, without a central file). Unknown names fail with the list of known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one kind, keyed by ``key(plugin)``, discovered from the modules of ``package``."""

    def __init__(self, kind: str, plural: str, key: Callable[[T], str], package: str) -> None:
        self.kind = kind
        self.plural = plural
        self._key = key
        self._package = package
        self._table: dict[str, T] = {}
        self._discovered = False
        # Reentrant: a plug-in module may look its registry up while discovery imports it.
        self._discovering = threading.RLock()

    def register(self, plugin: T) -> T:
        """Class decorator: make ``plugin`` available under its key; two plug-ins may not share one."""
        name = self._key(plugin)
        if self._table.get(name, plugin) is not plugin:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._table[name] = plugin
        return plugin

    def _discover(self) -> None:
        """Import every module of the package once per process (not "while the table is empty": a plug-in module
        imported directly would otherwise fill the table and hide every other one). Marked done only once every
        module is in: a thread that asks meanwhile (the agent serves requests in a thread pool) waits for the whole
        table instead of reading half of it."""
        if self._discovered:
            return
        with self._discovering:
            if self._discovered:
                return
            package = importlib.import_module(self._package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self._package}.{module.name}")
            self._discovered = True

    def items(self) -> dict[str, T]:
        """Every registered plug-in by name, sorted."""
        self._discover()
        return dict(sorted(self._table.items()))

    def names(self) -> list[str]:
        return list(self.items())

    def __contains__(self, name: object) -> bool:
        return name in self.items()

    def get(self, name: str) -> T:
        """The plug-in called ``name``; ``KeyError`` lists the known names."""
        table = self.items()
        if name not in table:
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(table)}")
        return table[name]
