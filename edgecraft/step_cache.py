"""Content-addressed cache of finished pipeline steps, so that a re-run (or a run resumed after a crash or a
kill) reuses every step that already finished.

A step's key is a digest of its input's key, the pass name, its validated config, the versions of the
libraries the pass declares and the source of the pass module: change any of them and the step (and every
step after it, whose input key changes) runs again. Keys chain from the model's own key (its weights or file
and the data splits), the way Olive identifies a pass output by its input model and pass config.

Entries are written to a temporary folder and renamed into place, so an interrupted step never leaves a
half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from compress.base import Artifact, Pass, PassConfig, PassOutcome
from reports.schema import Signature

log = logging.getLogger(__name__)

# Every step depends on these; a pass adds the libraries it calls through ``Pass.libraries``.
_CORE_LIBRARIES = ("numpy", "torch", "onnx")


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


def step_key(input_key: str, step: Pass, config: PassConfig) -> str:
    source = Path(inspect.getfile(type(step))).read_bytes()
    return digest(input_key, step.name, config.model_dump(mode="json"), library_versions(step.libraries), source,
                  step.environment_facts(config))


@dataclass
class CachedStep:
    outcome: PassOutcome
    seconds: float


class StepCache:
    """Finished steps under ``root/<key>/``; ``enabled=False`` (``--no-cache``) recomputes and overwrites."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = root
        self.enabled = enabled
        self.hits = 0

    def load(self, key: str, work_dir: Path) -> CachedStep | None:
        """The step's outcome with its files copied into ``work_dir`` (run folders stay self-contained)."""
        entry = self.root / key
        manifest = entry / "manifest.json"
        if not self.enabled or not manifest.exists():
            return None
        record = json.loads(manifest.read_text())
        if "signature" not in record:  # written before signatures existed: recompute
            return None
        shutil.copytree(entry / "files", work_dir, dirs_exist_ok=True)
        model = None
        path = work_dir / record["path"] if record["path"] else None
        if record["format"] == "torch":
            import torch

            # Our own entry, written by store() below: the pickled module is trusted like the code that wrote it.
            model = torch.load(work_dir / "model.pt", weights_only=False)
        self.hits += 1
        artifact = Artifact(record["format"], Signature.model_validate(record["signature"]), path=path, model=model)
        return CachedStep(PassOutcome(artifact, record["details"]), record["seconds"])

    def store(self, key: str, outcome: PassOutcome, work_dir: Path, seconds: float) -> None:
        artifact = outcome.artifact
        if artifact.path and not artifact.path.resolve().is_relative_to(work_dir.resolve()):
            log.info("not cached: the step's output %s lies outside its folder %s", artifact.path, work_dir)
            return
        if artifact.format == "torch":
            import torch

            torch.save(artifact.model, work_dir / "model.pt")
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{key}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(work_dir, temporary / "files")
        record = {
            "format": artifact.format,
            "signature": artifact.signature.model_dump(mode="json"),
            "path": str(artifact.path.relative_to(work_dir)) if artifact.path else None,
            "details": outcome.details,
            "seconds": seconds,
        }
        (temporary / "manifest.json").write_text(json.dumps(record, indent=2, default=str))
        final = self.root / key
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
