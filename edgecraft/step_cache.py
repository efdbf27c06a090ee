"""Content-addressed cache of finished pipeline steps, so that a re-run (or a run resumed after a crash or a
kill) reuses every step that already finished.

A step's key is a digest of its input's key, the pass name, its validated config, the versions of the
libraries the pass declares, the machine facts it depends on and the source of every module of ours that the
pass imports (directly or inside a function, followed transitively): change any of them and the step, and
every step after it (whose input key changes), runs again. Keys chain from the model's own key (its weights
and code, or its files, and the data splits), the way Olive identifies a pass output by its input model and
pass config.

The cache may be shared by concurrent runs (a CI cache, two terminals), so:
- an entry is written to a uniquely named temporary folder and swapped into place under a file lock;
- every file's sha256 is in the manifest and checked on load: a truncated or half-replaced entry is a miss
  (with a warning), never a wrong result;
- PyTorch models are stored as tensors and plain values (``compress.module_state``), read with
  ``weights_only=True``, so writing to a shared cache does not let anyone run code in the next run;
- a step that could not be stored is logged and the run goes on: the cache never fails a run.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from edgecraft.compress.base import Artifact, Pass, PassConfig, PassOutcome
from edgecraft.core.signature import Signature

log = logging.getLogger(__name__)

# Every step depends on these; a pass adds the libraries it calls through ``Pass.libraries``.
_CORE_LIBRARIES = ("numpy", "torch", "onnx")
# The packages whose source a step's key covers (the user's own modules are keyed by the model's key).
OUR_PACKAGES = ("edgecraft",)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.\w+)+(:\w+)?")
# Temporary folders of a killed run are removed once their process is gone (same host) or after this long.
STALE_TEMPORARY_S = 24 * 3600
_MANIFEST_VERSION = 2


def digest(*parts: Any) -> str:
    """A short stable hex digest of JSON-serialisable parts (bytes are hashed as they are)."""
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        sha.update(b"\0")
    return sha.hexdigest()[:20]


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in sorted(set(_CORE_LIBRARIES + names)):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of module ``name`` under ``root``, if it is one (``a.b`` is a/b.py or a/b/__init__.py)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name an AST imports, anywhere in it (imports inside functions run too), and every string
    that names a module in the ``package.module:attribute`` form (what the built-in table and the importlib
    calls load)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _REFERENCE.fullmatch(node.value):
            names.add(node.value.partition(":")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = module if is_package else module.rpartition(".")[0]
            for _ in range(max(node.level - 1, 0)):
                parent = parent.rpartition(".")[0]
            base = ".".join(filter(None, [parent if node.level else "", node.module or ""]))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def code_closure(module: str, packages: tuple[str, ...] = OUR_PACKAGES, root: Path = _PROJECT_ROOT) -> dict[str, str]:
    """``module`` and every module of ``packages`` it imports, transitively: name → sha256 of its source.

    Read from the files, not from ``sys.modules``: the key must be known before the step runs. Parent packages
    are included, since importing a module runs its packages' ``__init__``."""
    found: dict[str, str] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        if name in found or parts[0] not in packages:
            continue
        path = _module_file(name, root)
        if path is None:  # `from pkg import function`: the name is not a module
            continue
        source = path.read_bytes()
        found[name] = hashlib.sha256(source).hexdigest()
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        pending += _imported_names(ast.parse(source), name, path.name == "__init__.py")
    return dict(sorted(found.items()))


def code_key(*modules: str) -> str:
    """One digest over the code closures of ``modules``."""
    closure: dict[str, str] = {}
    for module in modules:
        closure.update(code_closure(module))
    return digest(closure)


def weights_digest(model: Any) -> str:
    """sha256 of a PyTorch module's state: every tensor's name, dtype, shape and bytes, in name order."""
    sha = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        value = state[name]
        if not hasattr(value, "detach"):  # a module's extra state: whatever it chose to store
            sha.update(f"{name}\0{value!r}\0".encode())
            continue
        tensor = value.detach().cpu().contiguous()
        sha.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        sha.update(_tensor_bytes(tensor))
    return sha.hexdigest()


def _tensor_bytes(tensor: Any) -> bytes:
    """A tensor's raw bytes, for any dtype numpy lacks (bfloat16) too; a quantized tensor by its int repr."""
    import torch

    if tensor.is_quantized:
        tensor = tensor.int_repr()
    if tensor.numel() == 0:
        return b""
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def architecture_key(model: Any) -> str:
    """What a module is apart from its weights: its structure (``repr``: layers, sizes, settings) and the source of
    every class in it that is not PyTorch's own (its ``forward`` and helpers), read where Python can read it (a
    file, a notebook cell); a class without readable source is keyed by its qualified name."""
    import inspect

    sources = {}
    for cls in sorted({type(module) for module in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if cls.__module__.split(".")[0] == "torch":
            continue
        name = f"{cls.__module__}.{cls.__qualname__}"
        try:
            sources[name] = inspect.getsource(cls)
        except (OSError, TypeError):  # a class defined in a notebook or a REPL: its functions' cells are readable
            parts = []
            for attribute, value in sorted(vars(cls).items()):
                function = getattr(value, "__func__", value)
                if inspect.isfunction(function):
                    try:
                        parts.append(inspect.getsource(function))
                    except (OSError, TypeError):
                        parts.append(f"{attribute}:{function.__code__.co_code.hex()}")
            sources[name] = "\n".join(parts)
    return digest(repr(model), sources)


def describe_module(model: Any) -> str:
    """How an in-memory module is written where a recipe is stored (results.json, the run's recipe.yaml)."""
    parameters = sum(p.numel() for p in model.parameters())
    return (
        f"<in-memory torch.nn.Module {type(model).__qualname__}, {parameters} parameters, "
        f"sha256 of weights {weights_digest(model)[:16]}>"
    )


def step_key(input_key: str, step: Pass, config: PassConfig) -> str:
    return digest(
        input_key,
        step.name,
        config.model_dump(mode="json"),
        library_versions(step.libraries),
        code_key(type(step).__module__),
        step.environment_facts(config),
    )


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _tree_digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): file_digest(path) for path in sorted(folder.rglob("*")) if path.is_file()}


@dataclass
class CachedStep:
    outcome: PassOutcome
    seconds: float


# How a cached PyTorch model is rebuilt: the architecture name (Artifact.architecture) → an empty skeleton.
Skeletons = Callable[[str], Any]


class StepCache:
    """Finished steps under ``root/<key>/``; ``enabled=False`` (``--no-cache``) neither reads nor writes."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = root
        self.enabled = enabled
        self.hits = 0
        if enabled:
            self._remove_stale_temporaries()

    def _lock(self, key: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{key}.lock")

    def load(self, key: str, work_dir: Path, skeletons: Skeletons) -> CachedStep | None:
        """The step's outcome with its files copied into ``work_dir`` (run folders stay self-contained), or None
        when there is no entry or it fails its checks (then it is recomputed and replaced)."""
        if not self.enabled:
            return None
        entry = self.root / key
        with self._lock(key):
            if not (entry / "manifest.json").exists():
                return None
            try:
                record = json.loads((entry / "manifest.json").read_text())
                if record.get("version") != _MANIFEST_VERSION:
                    return None
                shutil.copytree(entry / "files", work_dir, dirs_exist_ok=True)
            except (OSError, ValueError) as exc:
                log.warning("step cache entry %s is unreadable (%s): recomputing it", key, exc)
                return None
        try:
            return self._restore(record, work_dir, skeletons)
        except Exception as exc:  # noqa: BLE001 - a damaged entry of any kind is a miss, never a failed run
            log.warning("step cache entry %s failed its checks (%s): recomputing it", key, exc)
            return None

    def _restore(self, record: dict, work_dir: Path, skeletons: Skeletons) -> CachedStep:
        for name, expected in record["files"].items():
            if not (work_dir / name).is_file() or file_digest(work_dir / name) != expected:
                raise ValueError(f"{name} does not match its recorded sha256")
        model = None
        path = work_dir / record["path"] if record["path"] else None
        if record["format"] == "torch":
            from edgecraft.compress.module_state import load_module

            model = load_module(skeletons(record["architecture"]), work_dir / "model.state").eval()
        artifact = Artifact(
            record["format"],
            Signature.model_validate(record["signature"]),
            path=path,
            model=model,
            architecture=record["architecture"],
        )
        self.hits += 1
        return CachedStep(PassOutcome(artifact, record["details"]), record["seconds"])

    def store(self, key: str, outcome: PassOutcome, work_dir: Path, seconds: float) -> None:
        """Keep a finished step; a step that cannot be kept is logged and skipped (the run goes on)."""
        if not self.enabled:
            return
        artifact = outcome.artifact
        if artifact.path and not artifact.path.resolve().is_relative_to(work_dir.resolve()):
            log.info("not cached: the step's output %s lies outside its folder %s", artifact.path, work_dir)
            return
        try:
            self._store(key, outcome, work_dir, seconds)
        except Exception as exc:  # noqa: BLE001 - the step itself succeeded; only its reuse is lost
            log.warning("could not keep this step in the step cache %s: %s", self.root, exc)

    def _store(self, key: str, outcome: PassOutcome, work_dir: Path, seconds: float) -> None:
        artifact = outcome.artifact
        if artifact.format == "torch":
            from edgecraft.compress.module_state import save_module

            save_module(artifact.model, work_dir / "model.state")
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{key}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(work_dir, temporary / "files")
            record = {
                "version": _MANIFEST_VERSION,
                "format": artifact.format,
                "architecture": artifact.architecture,
                "signature": artifact.signature.model_dump(mode="json"),
                "path": str(artifact.path.relative_to(work_dir)) if artifact.path else None,
                "details": outcome.details,
                "seconds": seconds,
                "files": _tree_digests(temporary / "files"),
            }
            (temporary / "manifest.json").write_text(json.dumps(record, indent=2, default=str))
            final = self.root / key
            with self._lock(key):
                # Move the old entry aside, then the new one in: a kill between the two leaves no entry (a miss),
                # and one during the first leaves the old entry whole.
                retired = self.root / f".{key}-retired-{uuid.uuid4().hex[:8]}"
                if final.exists():
                    final.rename(retired)
                temporary.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def _remove_stale_temporaries(self) -> None:
        """Temporary and retired folders left by killed runs: those of dead processes on this host, and any
        older than a day (a run on another host sharing the cache)."""
        if not self.root.is_dir():
            return
        host = socket.gethostname()
        for folder in self.root.glob(".*-*"):
            if not folder.is_dir() or folder.name == ".locks":
                continue
            # .KEY-HOST-PID-RANDOM (a host name may hold dashes; the key and the ends do not)
            owner, _, _random = folder.name.partition("-")[2].rpartition("-")
            owner_host, _, pid = owner.rpartition("-")
            owner_gone = owner_host == host and pid.isdigit() and not _alive(int(pid))
            try:
                old = time.time() - folder.stat().st_mtime > STALE_TEMPORARY_S
            except OSError:
                continue
            if owner_gone or old or "-retired-" in folder.name:
                shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
