"""The step cache end to end: a re-run reuses every finished step (proved by passes that raise if they run) and
reproduces the numbers; a changed config or --no-cache recomputes; a killed run resumes; two runs sharing a
cache both finish with the same results.

Each test has its own cache folder (``EDGECRAFT_CACHE_DIR``), so no test depends on another's steps. The model
is a user-style factory model (no built-in to train), so a private cache costs nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, edgecraft

RECIPE = """\
name: cached
models:
  - factory: tests.helpers:tiny_net
data: {source: "tests.helpers:random_data"}
variants:
  - name: pruned-int8
    passes:
      - {type: prune.structured, ratio: RATIO, finetune_epochs: 1}
      - {type: export.onnx}
      - {type: quantize.static, calibration_method: METHOD}
targets: [onnxruntime:cpu]
"""

# Loaded by the interpreter of a run through PYTHONPATH: every pass raises if it is applied at all.
PASSES_THAT_MUST_NOT_RUN = """\
from edgecraft.compress import registry

def _refuse(self, *args, **kwargs):
    raise RuntimeError(f"{self.name} ran although the step cache holds it")

for _cls in registry.passes().values():
    _cls.apply = _refuse
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGECRAFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def recipe(tmp_path: Path, ratio: float = 0.25, method: str = "minmax") -> Path:
    path = tmp_path / f"cached-{ratio}-{method}.yaml"
    path.write_text(RECIPE.replace("RATIO", str(ratio)).replace("METHOD", method))
    return path


def run(tmp_path: Path, recipe_path: Path, *options: str) -> tuple[dict, str]:
    completed = edgecraft("-v", "run", recipe_path, "--quick", "--output-dir", tmp_path / "runs", *options)
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    log = " ".join(completed.stderr.split())  # the console wraps long lines
    return json.loads((run_dir / "results.json").read_text()), log


def test_second_run_reuses_every_step_and_reproduces_the_numbers(tmp_path: Path, monkeypatch) -> None:
    path = recipe(tmp_path)
    first, _ = run(tmp_path, path)
    assert [p["cached"] for p in first["passes"]] == [False, False, False]
    assert first["rows"][0]["status"] == "ok"

    refusing = tmp_path / "refusing"
    refusing.mkdir()
    (refusing / "sitecustomize.py").write_text(PASSES_THAT_MUST_NOT_RUN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(refusing), str(REPO)]))
    second, log = run(tmp_path, path)
    assert [p["cached"] for p in second["passes"]] == [True, True, True]
    assert "reused 3 finished step(s)" in log
    for before, after in zip(first["rows"], second["rows"], strict=True):
        assert after["status"] == "ok", after["reason"]
        assert after["sha256"] == before["sha256"]
        assert after["measurement"]["quality"]["value"] == before["measurement"]["quality"]["value"]
    assert [p["details"] for p in second["passes"]] == [p["details"] for p in first["passes"]]

    # --no-cache really runs the passes: with the refusing passes installed, every row fails with their reason.
    refused, _ = run(tmp_path, path, "--no-cache")
    assert "prune.structured ran although the step cache holds it" in refused["rows"][0]["reason"]
    monkeypatch.delenv("PYTHONPATH")
    recomputed, log = run(tmp_path, path, "--no-cache")
    assert not any(p["cached"] for p in recomputed["passes"]) and "reused" not in log
    assert (
        recomputed["rows"][0]["measurement"]["quality"]["value"] == first["rows"][0]["measurement"]["quality"]["value"]
    )


def test_a_changed_step_and_everything_after_it_run_again(tmp_path: Path) -> None:
    run(tmp_path, recipe(tmp_path, method="minmax"))
    changed_last, _ = run(tmp_path, recipe(tmp_path, method="entropy"))
    assert [p["cached"] for p in changed_last["passes"]] == [True, True, False]
    changed_first, _ = run(tmp_path, recipe(tmp_path, ratio=0.3, method="minmax"))
    assert [p["cached"] for p in changed_first["passes"]] == [False, False, False]


def committed(steps: Path) -> list[Path]:
    """The steps the cache has committed: an entry is written into a hidden ``.KEY-HOST-PID-RANDOM`` folder,
    manifest last, and renamed to ``KEY`` under the lock; only that rename makes it an entry. A manifest in a
    hidden folder is a step being stored, which a kill at that moment leaves unfinished."""
    return [path for path in steps.glob("*/manifest.json") if not path.parent.name.startswith(".")]


def test_a_run_killed_midway_resumes_from_the_finished_steps(tmp_path: Path, private_cache: Path) -> None:
    """Killed as soon as one step is committed (never while one is being stored, whatever the load), the run's
    rerun reuses at least that step."""
    steps = private_cache / "steps"
    path = recipe(tmp_path, ratio=0.4)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecraft", "run", str(path), "--output-dir", str(tmp_path / "killed")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not committed(steps) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before any step finished"
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(committed(steps))
    assert finished >= 1
    assert not list((tmp_path / "killed").glob("*/results.json"))  # the killed run wrote no results

    resumed, log = run(tmp_path, path)
    assert sum(p["cached"] for p in resumed["passes"]) >= finished
    assert f"reused {sum(p['cached'] for p in resumed['passes'])} finished step(s)" in log
    assert [row["status"] for row in resumed["rows"]] == ["ok"]


def test_two_runs_sharing_a_cache_both_finish_with_the_same_results(tmp_path: Path) -> None:
    path = recipe(tmp_path, ratio=0.5)
    command = [sys.executable, "-m", "edgecraft", "run", str(path), "--quick"]
    processes = [
        subprocess.Popen(
            [*command, "--output-dir", str(tmp_path / f"runs-{i}")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        results.append(json.loads((Path(out.strip().splitlines()[-1]).parent / "results.json").read_text()))
    rows = [result["rows"][0] for result in results]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert rows[0]["sha256"] == rows[1]["sha256"]
    assert rows[0]["measurement"]["quality"]["value"] == rows[1]["measurement"]["quality"]["value"]
    # A third run finds every step, whichever of the two stored it.
    third, _ = run(tmp_path, path)
    assert [p["cached"] for p in third["passes"]] == [True, True, True]


# Loaded by a run's interpreter through PYTHONPATH: every pass appends its name to APPLIED_LOG when applied.
PASSES_THAT_LOG = """\
import os
from edgecraft.compress import registry

def _logging(apply):
    def logged(self, *args, **kwargs):
        with open(os.environ["APPLIED_LOG"], "a") as log:
            log.write(self.name + "\\n")
        return apply(self, *args, **kwargs)
    return logged

for _cls in registry.passes().values():
    _cls.apply = _logging(_cls.apply)
"""

SHARED_PREFIX = """\
name: shared-prefix
models:
  - factory: tests.helpers:tiny_net
data: {source: "tests.helpers:random_data"}
variants:
  - name: static
    passes: [{type: prune.structured, ratio: 0.25, finetune_epochs: 1}, {type: export.onnx}, {type: quantize.static}]
  - name: dynamic
    passes: [{type: prune.structured, ratio: 0.25, finetune_epochs: 1}, {type: export.onnx}, {type: quantize.dynamic}]
targets: [onnxruntime:cpu]
"""


def test_variants_sharing_a_prefix_of_passes_run_it_once(tmp_path: Path, monkeypatch) -> None:
    logging_passes = tmp_path / "logging"
    logging_passes.mkdir()
    (logging_passes / "sitecustomize.py").write_text(PASSES_THAT_LOG)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(logging_passes), str(REPO)]))
    monkeypatch.setenv("APPLIED_LOG", str(tmp_path / "applied.txt"))
    path = tmp_path / "shared.yaml"
    path.write_text(SHARED_PREFIX)
    results, _ = run(tmp_path, path)
    applied = (tmp_path / "applied.txt").read_text().split()
    assert sorted(applied) == ["export.onnx", "prune.structured", "quantize.dynamic", "quantize.static"]
    assert [row["status"] for row in results["rows"]] == ["ok", "ok"]
