"""The step cache under faults: keys that cover the code a step runs, entries checked on load, a safe format for
PyTorch models, atomic replacement, stray folders cleaned up, and a cache that never fails a run."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecraft import step_cache
from edgecraft.compress import registry
from edgecraft.compress.base import Artifact, PassOutcome
from edgecraft.compress.module_state import ArchitectureMismatch, load_module, save_module
from edgecraft.compress.passes.pruning import prune_channels
from edgecraft.compress.zoo import image_classifier
from edgecraft.step_cache import StepCache, code_closure, file_digest, step_key
from tests.conftest import REPO

SIGNATURE = image_classifier((1, 16, 16))


def onnx_outcome(work_dir: Path, payload: bytes = b"model bytes") -> PassOutcome:
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "model.onnx").write_bytes(payload)
    return PassOutcome(Artifact("onnx", SIGNATURE, path=work_dir / "model.onnx"), {"note": "x"})


def no_skeleton(architecture: str):
    raise AssertionError("an ONNX entry needs no skeleton")


# --- keys --------------------------------------------------------------------------------------------------------


def test_the_key_follows_every_module_a_pass_imports_even_inside_functions() -> None:
    closures = {
        name: code_closure(registry.passes()[name].__module__)
        for name in ("distill", "quantize.static", "export.onnx", "quantize.qat", "prune.structured")
    }
    assert {"edgecraft.compress.training", "edgecraft.compress.facts", "edgecraft.compress.models"} <= set(
        closures["distill"]
    )
    assert (
        "edgecraft.compress.qdq" in closures["quantize.static"]
        and "edgecraft.compress.cpu" in closures["quantize.static"]
    )
    assert "edgecraft.compress.onnx_export" in closures["export.onnx"]
    assert {"edgecraft.compress.pt2e", "edgecraft.compress.onnx_export", "edgecraft.compress.training"} <= set(
        closures["quantize.qat"]
    )
    assert "edgecraft.compress.training" in closures["prune.structured"]


def test_editing_a_helper_module_changes_the_step_key(tmp_path: Path) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "step.py").write_text("def apply():\n    from userpkg import helper\n    return helper.value()\n")
    (package / "helper.py").write_text("def value():\n    return 1\n")
    (package / "unrelated.py").write_text("X = 1\n")

    def closure() -> dict[str, str]:
        return code_closure("userpkg.step", packages=("userpkg",), root=tmp_path)

    before = closure()
    assert set(before) == {"userpkg", "userpkg.step", "userpkg.helper"}
    (package / "unrelated.py").write_text("X = 2\n")
    assert closure() == before
    (package / "helper.py").write_text("def value():\n    return 2\n")
    assert closure()["userpkg.helper"] != before["userpkg.helper"]


def test_a_step_key_changes_with_the_config_and_the_input() -> None:
    step = registry.get("quantize.static")
    minmax, entropy = (step.config_model(type="quantize.static", calibration_method=m) for m in ("minmax", "entropy"))
    assert step_key("input", step, minmax) == step_key("input", step, minmax)
    assert step_key("input", step, minmax) != step_key("input", step, entropy)
    assert step_key("input", step, minmax) != step_key("other input", step, minmax)


def test_a_pass_key_changes_with_its_helpers_code_and_its_libraries(monkeypatch) -> None:
    step = registry.get("quantize.static")
    config = step.config_model()
    key = step_key("input", step, config)
    real_closure = step_cache.code_closure

    def edited(module: str, *args, **kwargs) -> dict[str, str]:
        closure = real_closure(module, *args, **kwargs)
        return {**closure, "edgecraft.compress.qdq": "edited"}

    monkeypatch.setattr(step_cache, "code_closure", edited)
    assert step_key("input", step, config) != key
    monkeypatch.setattr(step_cache, "code_closure", real_closure)
    monkeypatch.setattr(step_cache, "library_versions", lambda names: {"onnxruntime": "0.0.1"})
    assert step_key("input", step, config) != key


# --- entries -----------------------------------------------------------------------------------------------------


def test_an_entry_round_trips_with_its_files_checked(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "cache")
    cache.store("k1", onnx_outcome(tmp_path / "run1"), tmp_path / "run1", 1.5)
    loaded = cache.load("k1", tmp_path / "run2", no_skeleton)
    assert loaded is not None and loaded.seconds == 1.5 and loaded.outcome.details == {"note": "x"}
    assert loaded.outcome.artifact.path == tmp_path / "run2" / "model.onnx"
    assert loaded.outcome.artifact.path.read_bytes() == b"model bytes"
    manifest = json.loads((tmp_path / "cache" / "k1" / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"] == file_digest(tmp_path / "run1" / "model.onnx")


def test_a_truncated_entry_is_a_miss_with_a_warning(tmp_path: Path, caplog) -> None:
    cache = StepCache(tmp_path / "cache")
    cache.store("k1", onnx_outcome(tmp_path / "run1", b"x" * 1000), tmp_path / "run1", 1.0)
    stored = tmp_path / "cache" / "k1" / "files" / "model.onnx"
    stored.write_bytes(stored.read_bytes()[:10])
    with caplog.at_level(logging.WARNING):
        assert cache.load("k1", tmp_path / "run2", no_skeleton) is None
    assert "failed its checks" in caplog.text and "sha256" in caplog.text
    cache.store("k1", onnx_outcome(tmp_path / "run3", b"y" * 1000), tmp_path / "run3", 1.0)  # recomputed, replaced
    assert cache.load("k1", tmp_path / "run4", no_skeleton).outcome.artifact.path.read_bytes() == b"y" * 1000


def test_a_kill_while_an_entry_is_replaced_leaves_a_miss_or_the_old_entry(tmp_path: Path, monkeypatch) -> None:
    """The old cache deleted the entry, then renamed the new one in: a kill in between left a manifest beside
    partial files. Now the entry is moved aside, then the new one in; both halves of a kill are safe."""
    cache = StepCache(tmp_path / "cache")
    cache.store("k1", onnx_outcome(tmp_path / "old", b"old"), tmp_path / "old", 1.0)
    # The old failure mode, reproduced by hand: a manifest whose files were half deleted.
    (tmp_path / "cache" / "k1" / "files" / "model.onnx").unlink()
    assert cache.load("k1", tmp_path / "a", no_skeleton) is None

    cache.store("k1", onnx_outcome(tmp_path / "old2", b"old"), tmp_path / "old2", 1.0)
    real_rename = Path.rename

    def killed_after_moving_the_old_entry_aside(self: Path, target: Path):
        if self.name.startswith(".k1-"):  # the new entry's temporary folder: the kill happens before this rename
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_after_moving_the_old_entry_aside)
    with pytest.raises(KeyboardInterrupt):
        cache.store("k1", onnx_outcome(tmp_path / "new", b"new"), tmp_path / "new", 1.0)
    monkeypatch.undo()
    assert cache.load("k1", tmp_path / "b", no_skeleton) is None  # no entry: recomputed, never half of one


def test_stray_folders_of_killed_runs_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stray = root / f".abc123-{host}-{dead.pid}-deadbeef"
    live = root / f".abc123-{host}-{os.getpid()}-cafef00d"
    for folder in (stray, live):
        (folder / "files").mkdir(parents=True)
    StepCache(root)
    assert not stray.exists() and live.exists()


def test_no_cache_neither_reads_nor_writes(tmp_path: Path) -> None:
    StepCache(tmp_path / "cache").store("k1", onnx_outcome(tmp_path / "a"), tmp_path / "a", 1.0)
    off = StepCache(tmp_path / "cache", enabled=False)
    assert off.load("k1", tmp_path / "b", no_skeleton) is None
    off.store("k2", onnx_outcome(tmp_path / "c"), tmp_path / "c", 1.0)
    assert not (tmp_path / "cache" / "k2").exists()


def test_a_step_that_cannot_be_stored_is_logged_not_fatal(tmp_path: Path, monkeypatch, caplog) -> None:
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(step_cache.shutil, "copytree", full_disk)
    with caplog.at_level(logging.WARNING):
        StepCache(tmp_path / "cache").store("k1", onnx_outcome(tmp_path / "a"), tmp_path / "a", 1.0)
    assert "could not keep this step" in caplog.text and "No space left" in caplog.text


# --- PyTorch models ----------------------------------------------------------------------------------------------


class Local(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_a_pruned_model_defined_in_a_function_round_trips_through_the_cache(tmp_path: Path) -> None:
    """Pickling a whole module failed for a class defined inside a function ('Can't pickle local object') and
    a pass that succeeded was reported failed. Tensors and plain attributes store any model, and the pruned
    shapes are poured back into a copy of the unpruned original."""

    class DefinedInAFunction(Local):
        pass

    torch.manual_seed(0)
    original = DefinedInAFunction().eval()
    pruned = copy.deepcopy(original)
    prune_channels(pruned, SIGNATURE, 0.5, importance="l2")
    pruned.eval()
    assert pruned.conv.out_channels == 4
    work = tmp_path / "run1"
    work.mkdir()
    cache = StepCache(tmp_path / "cache")
    cache.store("k1", PassOutcome(Artifact("torch", SIGNATURE, model=pruned)), work, 1.0)
    loaded = cache.load("k1", tmp_path / "run2", lambda architecture: copy.deepcopy(original))
    model = loaded.outcome.artifact.model
    assert model.conv.out_channels == 4 and model.bn.num_features == 4 and model.head.in_features == 4 * 256
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), pruned(x))
    assert not model.training


def test_a_stored_tree_that_differs_from_the_skeleton_is_refused(tmp_path: Path) -> None:
    save_module(Local(), tmp_path / "model.state")
    with pytest.raises(ArchitectureMismatch):
        load_module(nn.Sequential(nn.Linear(2, 2)), tmp_path / "model.state")


class Boom:
    def __reduce__(self):
        return (Path.write_text, (Path(os.environ["BOOM_FILE"]), "code ran"))


def test_a_pickle_planted_in_the_cache_never_runs(tmp_path: Path, monkeypatch, caplog) -> None:
    """Anyone who can write to a shared cache could plant a pickle; entries load with weights_only=True."""
    work = tmp_path / "run1"
    work.mkdir()
    cache = StepCache(tmp_path / "cache")
    cache.store("k1", PassOutcome(Artifact("torch", SIGNATURE, model=Local())), work, 1.0)
    entry = tmp_path / "cache" / "k1"
    boom = tmp_path / "boom"
    monkeypatch.setenv("BOOM_FILE", str(boom))
    (entry / "files" / "model.state").write_bytes(pickle.dumps(Boom()))
    manifest = json.loads((entry / "manifest.json").read_text())  # the attacker fixes the digest too
    manifest["files"]["model.state"] = file_digest(entry / "files" / "model.state")
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert cache.load("k1", tmp_path / "run2", lambda architecture: Local()) is None
    assert not boom.exists() and "failed its checks" in caplog.text


def test_nothing_in_the_project_loads_with_weights_only_false() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("compress", "edgecraft", "bench", "targets", "reports")
        for path in (REPO / folder).rglob("*.py")
        if "weights_only=False" in path.read_text()
    ]
    assert offenders == []
