"""The one registry implementation: discovery of plug-in modules, also from several threads at once."""

from __future__ import annotations

import importlib
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecraft.core.registry import Registry

PLUGIN = textwrap.dedent("""\
    import time

    from {package} import REGISTRY

    time.sleep(0.3)  # a slow import (a runtime's bindings): other threads ask meanwhile


    @REGISTRY.register
    class Plugin{name}:
        name = "{name}"
    """)


@pytest.fixture
def slow_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """A package of three plug-in modules, each taking 0.3 s to import."""
    package = tmp_path / "slowplugins"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from edgecraft.core.registry import Registry\n\n"
        "REGISTRY = Registry('plug-in', 'plug-ins', lambda plugin: plugin.name, 'slowplugins')\n"
    )
    for name in ("a", "b", "c"):
        (package / f"{name}.py").write_text(PLUGIN.format(package="slowplugins", name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("slowplugins").REGISTRY
    for module in [name for name in sys.modules if name == "slowplugins" or name.startswith("slowplugins.")]:
        del sys.modules[module]


def test_threads_that_ask_during_discovery_see_every_plugin(slow_package: Registry) -> None:
    seen: list[list[str]] = []
    threads = [threading.Thread(target=lambda: seen.append(slow_package.names())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen == [["a", "b", "c"]] * 4


def test_an_unknown_name_lists_the_known_ones(slow_package: Registry) -> None:
    with pytest.raises(KeyError, match="unknown plug-in 'd'; known plug-ins: a, b, c"):
        slow_package.get("d")
