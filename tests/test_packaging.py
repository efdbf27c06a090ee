"""The extras: `edgecraft[agent]` stays light enough for an edge board, `edgecraft[all]` holds the whole suite."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.conftest import REPO

# Never on a device: training, export and conversion stacks.
HEAVY = {
    "torch",
    "tensorflow",
    "tf-keras",
    "onnx",
    "onnx2tf",
    "onnxscript",
    "nncf",
    "neural-compressor",
    "transformers",
    "torchao",
    "scipy",
    "scikit-learn",
    "matplotlib",
}


def _requirements(extra: str | None) -> set[str]:
    """The distribution names edgecraft requires with ``extra`` (None: the base install)."""
    names = set()
    for requirement in metadata.requires("edgecraft") or []:
        spec, _, marker = requirement.partition(";")
        if (extra is None and not marker) or (extra is not None and f'extra == "{extra}"' in marker):
            names.add(re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0).lower())
    return names


def _closure(extra: str) -> set[str]:
    """Base plus ``extra``, following edgecraft's own extras that it names (``edgecraft[a,b]``)."""
    names, todo, seen = _requirements(None), [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for requirement in metadata.requires("edgecraft") or []:
            spec, _, marker = requirement.partition(";")
            if f'extra == "{current}"' not in marker:
                continue
            inner = re.fullmatch(r"edgecraft\[([^\]]+)\]", spec.strip())
            if inner:
                todo += [name.strip() for name in inner.group(1).split(",") if name.strip() not in seen]
            else:
                names.add(re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0).lower())
    return names


def test_agent_extra_pulls_only_numpy_and_runtimes() -> None:
    agent = _closure("agent")
    assert {"numpy", "onnxruntime", "ai-edge-litert"} <= agent
    assert not agent & HEAVY, agent & HEAVY


def test_all_extra_holds_the_whole_suite() -> None:
    everything = _closure("all")
    assert HEAVY <= everything
    assert {"openvino", "ai-edge-litert", "onnxruntime", "torch-pruning", "jinja2"} <= everything
    assert _closure("all") <= _closure("test")


def test_the_wheel_installs_only_edgecraft_at_the_top_level(tmp_path: Path) -> None:
    """``pip install .`` from a copy of the tracked files (compress/, targets/, bench/ and reports/ reached through
    the links under edgecraft/) puts one package in site-packages: no top-level compress, targets, bench or
    reports to clash with other distributions."""
    source = tmp_path / "source"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True, text=True)
    for name in filter(None, listed.stdout.split("\0")):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_symlink():
            target.symlink_to(os.readlink(REPO / name))
        else:
            shutil.copy2(REPO / name, target)
    site = tmp_path / "site-packages"
    # setuptools from this environment when it has one (no download); else pip fetches it from the registry.
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *offline]
    completed = subprocess.run([*pip, "--target", str(site), str(source)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    top_level = {path.name for path in site.iterdir() if not path.name.endswith(".dist-info") and path.name != "bin"}
    assert top_level == {"edgecraft"}
    for part in ("compress", "targets", "bench", "reports", "core"):
        folder = site / "edgecraft" / part
        assert folder.is_dir() and not folder.is_symlink() and (folder / "__init__.py").is_file(), part
    assert (site / "edgecraft" / "reports" / "templates" / "report.html").is_file()  # package data travels too
    assert (site / "edgecraft" / "compress" / "passes" / "export.py").is_file()
    # Run from elsewhere than the repository (whose root would make `reports` importable by accident): the
    # installed copy finds its plug-ins and templates by the one import name.
    script = (
        "import importlib.util, edgecraft\n"
        "from edgecraft.compress import registry as passes\n"
        "from edgecraft.targets import registry as targets\n"
        "from edgecraft.core import formats\n"
        "from edgecraft.reports import html\n"
        "env = html.template_environment()\n"
        "[env.loader.get_source(env, name) for name in ('report.html', 'compare.html', 'tune.html')]\n"
        "print(edgecraft.__file__, len(passes.passes()), len(targets.runtimes()), formats.FORMATS.names(),\n"
        "      [name for name in ('compress', 'targets', 'bench', 'reports') if importlib.util.find_spec(name)])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    completed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    where, passes, runtimes, *rest = completed.stdout.strip().split(maxsplit=3)
    assert Path(where).is_relative_to(site) and int(passes) >= 10 and int(runtimes) >= 3, completed.stdout
    assert rest == ["['executorch', 'onnx', 'openvino', 'tflite'] []"], completed.stdout
