"""The step cache: a re-run reuses every finished step and reproduces the numbers; a changed config or
--no-cache recomputes; a run killed midway resumes from the steps that finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, edgecraft

RECIPE = """\
name: cached
models:
  - builtin: digits-cnn
variants:
  - name: pruned-int8
    passes:
      - {type: prune.structured, ratio: RATIO, finetune_epochs: 1}
      - {type: export.onnx}
      - {type: quantize.static, calibration_method: METHOD}
targets: [onnxruntime:cpu]
"""


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


def test_second_run_reuses_every_step_and_reproduces_the_numbers(tmp_path: Path) -> None:
    path = recipe(tmp_path)
    first, _ = run(tmp_path, path)
    second, log = run(tmp_path, path)
    assert [p["cached"] for p in first["passes"]] == [False, False, False]
    assert [p["cached"] for p in second["passes"]] == [True, True, True]
    assert log.count("reused from the step cache") == 3 and "reused 3 finished step(s)" in log
    for before, after in zip(first["rows"], second["rows"], strict=True):
        assert after["status"] == "ok"
        assert after["sha256"] == before["sha256"]
        assert after["measurement"]["quality"]["value"] == before["measurement"]["quality"]["value"]
    assert [p["details"] for p in second["passes"]] == [p["details"] for p in first["passes"]]

    recomputed, log = run(tmp_path, path, "--no-cache")
    assert not any(p["cached"] for p in recomputed["passes"]) and "reused" not in log
    assert recomputed["rows"][0]["measurement"]["quality"]["value"] == first["rows"][0]["measurement"]["quality"]["value"]


def test_a_changed_step_and_everything_after_it_run_again(tmp_path: Path) -> None:
    run(tmp_path, recipe(tmp_path, method="minmax"))
    changed_last, _ = run(tmp_path, recipe(tmp_path, method="entropy"))
    assert [p["cached"] for p in changed_last["passes"]] == [True, True, False]
    changed_first, _ = run(tmp_path, recipe(tmp_path, ratio=0.3, method="minmax"))
    assert [p["cached"] for p in changed_first["passes"]] == [False, False, False]


def test_a_run_killed_midway_resumes_from_the_finished_steps(tmp_path: Path) -> None:
    from edgecraft.model_source import cache_dir

    steps = cache_dir() / "steps"
    before = set(steps.glob("*/manifest.json")) if steps.exists() else set()
    path = recipe(tmp_path, ratio=0.4)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecraft", "run", str(path), "--output-dir", str(tmp_path / "killed")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (set(steps.glob("*/manifest.json")) - before) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before any step finished"
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(set(steps.glob("*/manifest.json")) - before)
    assert finished >= 1
    assert not list((tmp_path / "killed").glob("*/results.json"))  # the killed run wrote no results

    resumed, log = run(tmp_path, path)
    assert sum(p["cached"] for p in resumed["passes"]) >= finished
    assert f"reused {sum(p['cached'] for p in resumed['passes'])} finished step(s)" in log
    assert [row["status"] for row in resumed["rows"]] == ["ok"]
