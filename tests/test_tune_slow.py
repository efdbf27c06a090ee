"""edgecraft tune at full size: the digits-mobilenet sweep of recipes/tune-mobilenet.yaml (24 trials, quick profile),
its best recipe run again, a tune killed mid-study and resumed, and the same study on a local 2-node Ray cluster
(with its latency objective, and with a deterministic one that must give the same trials and choice)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_tune import write

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "tune-mobilenet.yaml"


def edgecraft(*args: str, env: dict | None = None, timeout: float = 4 * 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgecraft", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def printed(stdout: str, label: str) -> Path:
    return Path(stdout.split(f"{label}: ")[1].split()[0])


def trials_of(folder: Path) -> list[dict]:
    return json.loads((folder / "trials.json").read_text())["trials"]


def chosen_trial(folder: Path) -> dict:
    data = json.loads((folder / "trials.json").read_text())
    return next(t for t in data["trials"] if t["number"] == data["chosen"])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    done = edgecraft("tune", RECIPE, "--quick", "--output-dir", out, "--mlflow-uri", f"sqlite:///{out / 'mlflow.db'}")
    assert done.returncode == 0, done.stderr[-3000:]
    return printed(done.stdout, "report").parent


def test_sweep_finds_a_2x_variant_within_one_point(sweep: Path):
    trials = trials_of(sweep)
    assert len(trials) >= 20
    best = chosen_trial(sweep)
    assert best["drop"] <= 0.01 and best["speedup"] >= 2.0, best
    html = (sweep / "tune-report.html").read_text()
    assert "chosen: trial" in html and "Pareto front" in html

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("edgecraft-tune/tune-mobilenet")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "edgecraft.trial" in r.data.tags]
    assert len(runs) == len(trials)
    complete = [r for r in runs if r.data.tags["edgecraft.state"] == "complete"]
    assert complete and all("p50_ms" in r.data.metrics for r in complete)
    assert all("report.html" in {a.path for a in client.list_artifacts(r.info.run_id)} for r in complete)


def test_best_recipe_reproduces_the_point(sweep: Path, tmp_path: Path):
    best = chosen_trial(sweep)
    done = edgecraft("run", sweep / "best-recipe.yaml", "--quick", "--output-dir", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((Path(done.stdout.strip().splitlines()[-1]).parent / "results.json").read_text())
    rows = {row["variant"]: row for row in results["rows"]}
    again, fp32 = rows["compressed"]["measurement"], rows["fp32"]["measurement"]
    assert again["quality"]["value"] == pytest.approx(best["metric"], abs=1e-9)  # training is deterministic
    assert rows["compressed"]["size_bytes"] == best["row"]["size_bytes"]
    p50 = again["latency_ms"]["p50"]
    assert 0.67 < p50 / best["row"]["p50"] < 1.5, (p50, best["row"]["p50"])  # quick profile on a shared machine
    assert fp32["latency_ms"]["p50"] / p50 >= 1.8, "the speed-up holds (within noise of 2×)"


def test_killed_tune_resumes_without_redoing_trials(tmp_path: Path):
    import optuna

    path = write(tmp_path)
    args = [sys.executable, "-m", "edgecraft", "tune", str(path), "--no-track", "--trials", "4"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    storage = f"sqlite:///{tmp_path / 'runs' / 'tiny-tune-tune' / 'study.db'}"
    deadline = time.time() + 1800
    finished: list = []
    while time.time() < deadline and process.poll() is None:
        time.sleep(2)
        try:
            study = optuna.load_study(study_name="tiny-tune", storage=storage)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        finished = [t for t in study.get_trials() if t.state.is_finished()]
        if finished:
            break
    assert finished and process.poll() is None, "the tune ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {t.number: t.datetime_complete for t in finished}
    done = edgecraft("tune", path, "--no-track", "--trials", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="tiny-tune", storage=storage)
    trials = study.get_trials()
    for number, completed in before.items():
        assert trials[number].datetime_complete == completed  # not redone
    counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 4
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    for trial in interrupted:  # the trial the kill cut short ran again with its parameters
        assert any(t.params == trial.params for t in counted if t.number > trial.number)


def assert_measured_alone(trials: list[dict]) -> None:
    """No trial's measurement overlapped another trial's training, export or measurement (every node of the test
    cluster is on this one host)."""
    measured = [t for t in trials if t.get("measure_interval")]
    assert measured
    for trial in measured:
        start, end = trial["measure_interval"]
        for other in trials:
            if other is trial:
                continue
            for interval in (other.get("prepare_interval"), other.get("measure_interval")):
                if interval:
                    assert interval[1] <= start or end <= interval[0], (trial["number"], other["number"], interval)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_cluster(tmp_path: Path):
    """Two Ray nodes on loopback (head + one worker), one CPU and one benchmark slot each, small object stores."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    common = [
        "--num-cpus",
        "1",
        "--resources",
        '{"benchmark_slot": 1}',
        "--object-store-memory",
        "80000000",
        "--node-ip-address",
        "127.0.0.1",
        "--block",
        "--disable-usage-stats",
    ]
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(20)
    worker = subprocess.Popen(
        [ray, "start", "--address", f"127.0.0.1:{port}", *common],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(20)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        for process in (worker, head):  # our own process groups only
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in (worker, head):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_mobilenet_study_on_two_ray_nodes(sweep: Path, ray_cluster, tmp_path: Path):
    """recipes/tune-mobilenet.yaml on the 2-node cluster as a user runs it: trials on both nodes, the same start-up
    trials and the same metric for the same parameters as the local sweep, no measurement beside another trial's
    work, and a chosen point that meets the issue's bar. Its choice need not be the local one: near the optimum
    several configurations are within the quick profile's noise of each other, so which one TPE's 'good' group
    holds, and so what it proposes next, is a coin toss on any machine (the size study below shows the sampler
    itself is unchanged by Ray)."""
    address, env = ray_cluster
    done = edgecraft(
        "tune",
        RECIPE,
        "--quick",
        "--output-dir",
        tmp_path,
        "--no-track",
        "--ray-address",
        address,
        env={key: env[key] for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = printed(done.stdout, "report").parent
    on_ray, local = trials_of(folder), trials_of(sweep)
    assert len(on_ray) >= 20
    assert [t["params"] for t in on_ray[:4]] == [t["params"] for t in local[:4]]
    metrics = {json.dumps(t["params"], sort_keys=True): t["metric"] for t in local if t["state"] == "complete"}
    for trial in on_ray:
        if trial["state"] == "complete" and json.dumps(trial["params"], sort_keys=True) in metrics:
            assert trial["metric"] == metrics[json.dumps(trial["params"], sort_keys=True)], trial["params"]
    best = chosen_trial(folder)
    assert best["drop"] <= 0.01 and best["speedup"] >= 2.0, best
    assert len({t["ray_node"] for t in on_ray if t.get("measure_interval")}) == 2
    assert_measured_alone(on_ray)


def test_same_study_on_two_ray_nodes_gives_the_same_choice(ray_cluster, tmp_path: Path):
    """The same search space, seed and batches with a deterministic objective (size; the accuracy constraint is
    deterministic too): here and on the 2-node cluster every trial has the same parameters, state, metric and size,
    and the same configuration is chosen, with trials on both nodes and no measurement beside another's work."""
    address, env = ray_cluster
    data = yaml.safe_load(RECIPE.read_text())
    data["search"].update(objectives=["size"], study="tune-mobilenet-size")
    recipe = tmp_path / "tune-mobilenet-size.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    local = edgecraft("tune", recipe, "--quick", "--no-track", "--output-dir", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = edgecraft(
        "tune",
        recipe,
        "--quick",
        "--no-track",
        "--output-dir",
        tmp_path / "ray",
        "--ray-address",
        address,
        env={key: env[key] for key in ("RAY_AUTH_MODE",)},
    )
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    here, there = printed(local.stdout, "report").parent, printed(on_ray.stdout, "report").parent
    mine, theirs = trials_of(here), trials_of(there)
    assert len(mine) >= 20
    for key in ("params", "state", "metric"):
        assert [t[key] for t in mine] == [t[key] for t in theirs], key
    assert [t["row"] and t["row"]["size_bytes"] for t in mine] == [t["row"] and t["row"]["size_bytes"] for t in theirs]
    assert chosen_trial(here)["params"] == chosen_trial(there)["params"]
    assert len({t["ray_node"] for t in theirs if t.get("measure_interval")}) == 2
    assert_measured_alone(theirs)


def test_tiny_study_on_two_ray_nodes_matches_the_local_one(ray_cluster, tmp_path: Path):
    """The digits-cnn study (4 trials, one batch) here and on the 2-node cluster: the same trials and the same
    choice for the same seed, trials on both nodes, and no measurement beside another trial's work."""
    address, env = ray_cluster
    recipe = write(tmp_path)
    local = edgecraft("tune", recipe, "--no-track", "--trials", "4", "--seed", "7", "--output-dir", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = edgecraft(
        "tune",
        recipe,
        "--no-track",
        "--trials",
        "4",
        "--seed",
        "7",
        "--output-dir",
        tmp_path / "ray",
        "--ray-address",
        address,
        env={key: env[key] for key in ("RAY_AUTH_MODE",)},
    )
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    here, there = trials_of(printed(local.stdout, "report").parent), trials_of(printed(on_ray.stdout, "report").parent)
    assert [t["params"] for t in here] == [t["params"] for t in there]
    assert [t["state"] for t in here] == [t["state"] for t in there]
    assert [t.get("metric") for t in here] == [t.get("metric") for t in there]  # deterministic training
    if any(t.get("feasible") for t in here):
        assert (
            chosen_trial(printed(local.stdout, "report").parent)["params"]
            == chosen_trial(printed(on_ray.stdout, "report").parent)["params"]
        )
    assert len({t["ray_node"] for t in there}) == 2
    assert_measured_alone(there)
