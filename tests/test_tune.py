"""edgecraft tune: the search section's errors, the study (seeded, resumed without redoing trials), MLflow, the
tune report and the best recipe; one real study on digits-cnn with the quick profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgecraft.cli import main
from edgecraft.recipe.load import load_recipe

BASE = {
    "name": "tiny-tune",
    "models": [{"builtin": "digits-cnn"}],
    "variants": [
        {"name": "fp32"},
        {
            "name": "pruned",
            "passes": [
                {"type": "prune.structured", "ratio": 0.5, "finetune_epochs": 1},
                {"type": "export.onnx"},
                {"type": "quantize.static"},
            ],
        },
    ],
    "targets": ["onnxruntime:cpu"],
    "benchmark": {"profile": "quick", "operator_profile": False},
    "search": {
        "parameters": {
            "variants.pruned.passes[0].ratio": {"choice": [0.1, 0.2]},
            "variants.pruned.passes[2].calibration_method": {"choice": ["minmax", "entropy"]},
        },
        "max_drop": 0.05,
        "trials": 2,
    },
}


def write(tmp_path: Path, search: dict | None = None, **changes) -> Path:
    data = json.loads(json.dumps(BASE))
    data.update(changes, output_dir=str(tmp_path / "runs"))
    if search is not None:
        data["search"] = search
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "search, expected",
    [
        ({"parameters": {}}, "the search space is empty"),
        (
            {"parameters": {"variants.pruned.passes[0].ratioo": {"float": [0.2, 0.7]}}},
            "prune.structured has no parameter 'ratioo'",
        ),
        ({"parameters": {"variants.nope.passes[0].ratio": {"float": [0.2, 0.7]}}}, "no variant named 'nope'"),
        ({"parameters": {"variants.pruned.passes[5].ratio": {"float": [0.2, 0.7]}}}, "has 3 pass(es), no passes[5]"),
        ({"parameters": {"variants.pruned.passes[0].ratio": {"float": [0.7, 0.2]}}}, "a range needs low < high"),
        ({"parameters": {"variants.pruned.passes[0].ratio": {"float": [0.2, 1.5]}}}, "ratio = 1.5 is not valid"),
        ({"parameters": {"variants.pruned.passes[0].ratio": {"float": [0.2, 0.5], "choice": [1]}}}, "exactly one of"),
        (
            {"parameters": {"variants.pruned.passes[2].calibration_method": {"choice": ["minmax", "magic"]}}},
            "calibration_method = 'magic' is not valid",
        ),
    ],
)
def test_bad_search_is_one_line_and_exit_2(tmp_path, capsys, search, expected):
    path = write(tmp_path, search)
    assert main(["tune", str(path), "--no-track"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}") and "search" in err and expected in err, err


def test_run_ignores_search_and_schema_publishes_it(tmp_path):
    recipe, _ = load_recipe(write(tmp_path))
    assert recipe.search is not None and recipe.search.trials == 2
    from edgecraft.recipe.schema import recipe_json_schema

    assert "search" in recipe_json_schema()["properties"]


def fake_trial(data, base_dir, search, values, trials_dir, number, profile=None, lock=None):
    """A stand-in trial (the study logic without compression): smaller ratio → slower, entropy → more accurate."""
    ratio = values["variants.pruned.passes[0].ratio"]
    method = values["variants.pruned.passes[2].calibration_method"]
    run_dir = Path(trials_dir) / f"trial-{number:04d}"
    run_dir.mkdir(parents=True)
    (run_dir / "report.html").write_text("<html></html>")
    (run_dir / "results.json").write_text(json.dumps({"environment": {"python": "3"}}))
    (run_dir / "model.onnx").write_bytes(b"\0" * int(1000 * (1 - ratio)))
    metric = 0.97 - ratio / 10 + (0.02 if method == "entropy" else 0)
    row = {
        "model": "digits-cnn",
        "variant": "pruned",
        "target": "onnxruntime:cpu",
        "status": "ok",
        "reason": None,
        "lossless": False,
        "artifact": "model.onnx",
        "size_bytes": int(1000 * (1 - ratio)),
        "p50": 1 - ratio,
        "p90": 1.1,
        "p95": 1.1,
        "p99": 1.2 - ratio,
        "metric": metric,
        "peak_mb": 50.0,
    }
    drop = 0.98 - metric
    return {
        "number": number,
        "values": values,
        "state": "complete",
        "run_dir": str(run_dir),
        "rows": [row],
        "row": row,
        "metric": metric,
        "reference": 0.98,
        "metric_name": "top-1 accuracy",
        "drop": drop,
        "values_objective": [{"latency": row["p50"], "size": row["size_bytes"]}[name] for name in search["objectives"]],
        "constraint": drop - search["max_drop"],
        "feasible": drop <= search["max_drop"],
        "speedup": 1 / row["p50"],
    }


def test_study_resumes_tracks_and_reports(tmp_path, capsys):
    from mlflow import MlflowClient

    from edgecraft.tune.study import tune
    from edgecraft.tune.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path)
    first = tune(path, trials=2, seed=3, tracker=Tracker(uri), run_trial=fake_trial)
    assert first.new_trials == 2
    again = tune(path, trials=4, seed=3, tracker=Tracker(uri), run_trial=fake_trial)
    assert again.new_trials == 2  # the two finished trials are not redone
    trials = json.loads((again.folder / "trials.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3] and all(t["state"] == "complete" for t in trials)
    assert tune(path, trials=4, seed=3, run_trial=fake_trial).new_trials == 0

    html = again.report.read_text()
    assert "<svg" in html and "Pareto front" in html and "chosen: trial" in html and "Study history" in html
    best = yaml.safe_load(again.best_recipe.read_text())
    assert "search" not in best
    chosen = min((t for t in trials if t["feasible"]), key=lambda t: (t["values"][0], -t["metric"], t["number"]))
    assert best["variants"][1]["passes"][0]["ratio"] == chosen["params"]["variants.pruned.passes[0].ratio"]
    recipe, _ = load_recipe(again.best_recipe)  # what `edgecraft run` reads
    assert recipe.search is None

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("edgecraft-tune/tiny-tune")
    runs = client.search_runs([experiment.experiment_id])
    runs = [r for r in runs if "edgecraft.trial" in r.data.tags]
    assert sorted(int(r.data.tags["edgecraft.trial"]) for r in runs) == [0, 1, 2, 3]
    for run in runs:
        assert "variants.pruned.passes.0.ratio" in run.data.params
        assert {"p50_ms", "p99_ms", "size_bytes", "metric", "peak_mb"} <= set(run.data.metrics)
        assert "edgecraft.recipe_sha256" in run.data.tags and "env.python" in run.data.tags
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.html", "results.json", "model"} <= artifacts


def test_best_recipe_names_the_base_recipes_files(tmp_path):
    """The best recipe is written in the tune folder: a model file the base recipe names relative to its own folder
    is named relative to the tune folder, so `edgecraft run best-recipe.yaml` reads the same file."""
    from edgecraft.tune.study import tune

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "weights").mkdir()
    (recipes / "weights" / "net.pt").write_bytes(b"not read by the stand-in trials")
    data = json.loads(json.dumps(BASE))
    data.update(
        models=[{"factory": "tests.fixtures_models:three_head_net", "weights": "weights/net.pt"}],
        output_dir=str(tmp_path / "elsewhere" / "runs"),
    )
    path = recipes / "tune.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = tune(path, trials=2, run_trial=fake_trial)
    written = yaml.safe_load(result.best_recipe.read_text())["models"][0]["weights"]
    assert not Path(written).is_absolute()
    recipe, _ = load_recipe(result.best_recipe)
    assert Path(recipe.models[0].weights) == (recipes / "weights" / "net.pt").resolve()


def test_accuracy_aware_int8_options_are_search_parameters(tmp_path, capsys):
    """The accuracy-aware int8 options of quantize.static are searched like any other parameter: null (plain
    int8) is a choice of max_drop, and a value the pass refuses is one line."""
    from edgecraft.tune.study import plan

    parameters = {
        "variants.pruned.passes[2].max_drop": {"choice": [None, 0.005]},
        "variants.pruned.passes[2].first_last_float": {"choice": [False, True]},
    }
    checked = plan(write(tmp_path, {"parameters": parameters}))
    assert checked.search.parameters["variants.pruned.passes[2].max_drop"].choice == [None, 0.005]
    bad = write(tmp_path, {"parameters": {"variants.pruned.passes[2].max_drop": {"choice": [None, 2]}}})
    assert main(["tune", str(bad), "--no-track"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max_drop = 2 is not valid" in err, err


def test_tune_mobilenet_searches_accuracy_aware_int8():
    """The shipped sweep searches prune ratio, distillation, calibration and the accuracy-aware int8 options."""
    from edgecraft.tune.study import plan
    from tests.conftest import REPO

    fields = {place.rsplit(".", 1)[1] for place in plan(REPO / "recipes" / "tune-mobilenet.yaml").search.parameters}
    assert {"ratio", "temperature", "alpha", "calibration_method", "max_drop", "first_last_float"} <= fields


def test_chosen_point_does_not_pick_a_winner_by_noise():
    """Trials within latency_tolerance of the fastest tie with it and the most accurate, then the smallest, wins;
    outside the band, or with no tolerance, the fastest wins; the choice is on the feasible Pareto front (which
    counts size) either way."""
    from edgecraft.tune.space import SearchSpec
    from edgecraft.tune.study import chosen, pareto

    def trial(number, p50, metric, feasible=True, size=1000):
        return {
            "number": number,
            "state": "complete",
            "feasible": feasible,
            "values": [p50],
            "metric": metric,
            "row": {"size_bytes": size},
        }

    table = [
        trial(0, 1.00, 0.970),
        trial(1, 1.02, 0.980),
        trial(2, 1.10, 0.990),
        trial(3, 0.90, 0.5, False),
        trial(4, 1.01, 0.980, size=1200),
    ]  # as accurate as 1 and as fast within noise, but larger
    search = SearchSpec.model_validate(BASE["search"])
    assert chosen(table, search)["number"] == 1
    assert chosen(table, search.model_copy(update={"latency_tolerance": 0.0}))["number"] == 0
    assert chosen(table, search.model_copy(update={"latency_tolerance": 0.2}))["number"] == 2
    assert {
        chosen(table, search.model_copy(update={"latency_tolerance": tol}))["number"] for tol in (0.0, 0.03, 0.2)
    } <= pareto(table)
    assert chosen(table, search.model_copy(update={"objectives": ["size"]}))["number"] == 0


def test_two_objectives_use_nsga2_and_a_pareto_front(tmp_path):
    import optuna

    from edgecraft.tune.study import tune

    search = json.loads(json.dumps(BASE["search"]))
    search.update(objectives=["latency", "size"], trials=4)
    result = tune(write(tmp_path, search), run_trial=fake_trial)
    study = optuna.load_study(study_name="tiny-tune", storage=result.storage)
    assert len(study.directions) == 2
    data = json.loads((result.folder / "trials.json").read_text())
    assert data["objectives"] == ["latency", "size"] and data["pareto"] and data["chosen"] in data["pareto"]
    assert all(len(t["values"]) == 2 for t in data["trials"])


def test_killed_trial_is_redone_and_finished_ones_are_not(tmp_path):
    import optuna

    from edgecraft.tune.study import plan, tune, tune_folder

    path = write(tmp_path)
    done = tune(path, trials=1, seed=0, run_trial=fake_trial)
    study = optuna.load_study(study_name="tiny-tune", storage=done.storage)
    killed = study.ask(
        {
            "variants.pruned.passes[0].ratio": optuna.distributions.CategoricalDistribution([0.1, 0.2]),
            "variants.pruned.passes[2].calibration_method": optuna.distributions.CategoricalDistribution(
                ["minmax", "entropy"]
            ),
        }
    )  # never told
    seen = []

    def recording(**call):
        seen.append((call["number"], call["values"]))
        return fake_trial(**call)

    result = tune(path, trials=3, seed=0, run_trial=recording)
    assert result.new_trials == 2 and [n for n, _ in seen] == [2, 3]
    assert seen[0][1] == killed.params  # the interrupted trial's parameters, run again
    assert tune_folder(plan(path), None) == result.folder


def test_unreachable_mlflow_server_is_one_line(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["tune", str(path), "--mlflow-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not reachable" in err, err


def test_unreachable_ray_address_is_one_line(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["tune", str(path), "--no-track", "--ray-address", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Ray head answers" in err, err


def test_real_study_on_digits_cnn(tmp_path, capsys):
    """Two real trials (quick profile): the tune folder, the report and a best recipe that validates."""
    path = write(tmp_path)
    assert main(["tune", str(path), "--no-track", "--trials", "2", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    report = Path(out.split("report: ")[1].split()[0])
    assert report.is_file()
    trials = json.loads((report.parent / "trials.json").read_text())["trials"]
    assert len(trials) == 2
    assert all(t["state"] in ("complete", "pruned") for t in trials), trials
    complete = [t for t in trials if t["state"] == "complete"]
    for trial in complete:
        assert trial["row"]["p50"] > 0 and Path(trial["run_dir"], "report.html").is_file()
    if complete:  # what `edgecraft run --track` would log: a run folder as one MLflow run
        from mlflow import MlflowClient

        from edgecraft.tune.tracking import track_run

        uri = f"sqlite:///{tmp_path / 'runs.db'}"
        run = MlflowClient(tracking_uri=uri).get_run(track_run(Path(complete[0]["run_dir"]), uri))
        assert any(key.endswith("/p50_ms") for key in run.data.metrics) and "edgecraft.recipe_sha256" in run.data.tags
        assert {"report.html", "results.json"} <= {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    if "best recipe: none" not in out:
        best = Path(out.split("best recipe: ")[1].split()[0])
        assert main(["recipe", "validate", str(best)]) == 0
        # `edgecraft run --track` on the best recipe: the run is logged to MLflow as it ends.
        from mlflow import MlflowClient

        uri = f"sqlite:///{tmp_path / 'tracked.db'}"
        assert main(["run", str(best), "--quick", "--output-dir", str(tmp_path / "rerun"), "--mlflow-uri", uri]) == 0
        (run,) = MlflowClient(uri).search_runs(
            [MlflowClient(uri).get_experiment_by_name("edgecraft-runs").experiment_id]
        )
        assert any(key.endswith("/p50_ms") for key in run.data.metrics)


def test_proxy_prunes_before_export_and_benchmark(tmp_path):
    """Pruned to half its channels with one fine-tuning epoch, digits-cnn is already over a 0.1-point budget
    after training: the trial stops there, with no export, no benchmark and no results."""
    from edgecraft.tune.study import plan
    from edgecraft.tune.trial import run_trial

    path = write(tmp_path, {"parameters": {"variants.pruned.passes[0].ratio": {"choice": [0.5]}}, "max_drop": 0.001})
    checked = plan(path)
    outcome = run_trial(
        checked.data,
        str(tmp_path),
        checked.search.model_dump(by_alias=True),
        {"variants.pruned.passes[0].ratio": 0.5},
        str(tmp_path / "trials"),
        0,
    )
    assert outcome["state"] == "pruned", outcome
    assert outcome["proxy"]["drop"] > 0.001 and outcome["measure_interval"] is None
    run_dir = Path(outcome["run_dir"])
    assert not (run_dir / "results.json").exists()
    assert not list(run_dir.rglob("*quantize.static*"))


def test_trial_measures_under_the_exclusive_hold(tmp_path):
    """A trial trains and exports under the machine lock's shared hold and lets it go before it waits for the
    exclusive hold it measures under: another trial may train beside its training, never beside its measurement."""
    import contextlib
    import time

    from edgecraft.tune.study import plan
    from edgecraft.tune.trial import run_trial

    class Recording:
        def __init__(self):
            self.events = []

        def acquire_read(self):
            self.events.append(("read", time.time()))

        def release(self):
            self.events.append(("release", time.time()))

        @contextlib.contextmanager
        def write_lock(self):
            self.events.append(("write", time.time()))
            yield
            self.events.append(("write done", time.time()))

    lock = Recording()
    checked = plan(write(tmp_path))
    outcome = run_trial(
        checked.data,
        str(tmp_path),
        checked.search.model_dump(by_alias=True),
        {"variants.pruned.passes[0].ratio": 0.1, "variants.pruned.passes[2].calibration_method": "minmax"},
        str(tmp_path / "trials"),
        0,
        lock=lock,
    )
    assert outcome["state"] == "complete", outcome
    assert [name for name, _ in lock.events] == ["read", "release", "write", "write done"]
    (_, read), (_, released), (_, exclusive), (_, done) = lock.events
    prepared, measured = outcome["prepare_interval"], outcome["measure_interval"]
    assert read <= prepared[0] <= prepared[1] <= released <= exclusive <= measured[0] <= measured[1] <= done
