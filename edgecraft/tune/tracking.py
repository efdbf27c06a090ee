"""MLflow tracking: one MLflow run per trial (and one per ``track_run``), in one experiment per study.

The store is ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory
(MLflow 3's own local default; no server). A server that does not answer is one line and exit 2, before any trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from edgecraft.core.errors import EdgecraftError

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _key(text: str) -> str:
    """An MLflow key: 'variants.pruned.passes[0].ratio' → 'variants.pruned.passes.0.ratio', ':' → '_'."""
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", re.sub(r"\[(\d+)\]", r".\1", text))


def git_commit(folder: Path) -> str | None:
    """The commit of the git work tree holding ``folder`` (the project being measured), if there is one."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


class Tracker:
    """An MLflow client on one store, checked on creation."""

    def __init__(self, uri: str | None = None):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        self.uri = resolve_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the user's to fix
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgecraftError(
                f"--mlflow-uri {self.uri}: the MLflow tracking store is not reachable: {first[:300]}"
            ) from None
        self.experiment_id: str | None = None
        self.tags: dict[str, str] = {}

    def _experiment_id(self) -> str:
        """The study's experiment, which ``start`` opens: every run of a tune is logged in it."""
        if self.experiment_id is None:
            raise EdgecraftError("MLflow tracking: a run is logged before Tracker.start(study, plan) opened the study")
        return self.experiment_id

    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found else self.client.create_experiment(name)

    def start(self, study: str, plan: Any) -> None:
        self.experiment_id = self.experiment(f"edgecraft-tune/{study}")
        text = plan.path.read_text()
        self.tags = {
            "edgecraft.study": study,
            "edgecraft.recipe": str(plan.path),
            "edgecraft.recipe_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        commit = git_commit(plan.path.resolve().parent)
        if commit:
            self.tags["git.commit"] = commit

    def log_trial(self, outcome: dict[str, Any], search: Any) -> str:
        """One MLflow run for the trial: sampled parameters, the scored row's and every row's figures, the
        environment, and report.html, results.json and the scored model file as artifacts."""
        run = self.client.create_run(
            self._experiment_id(),
            run_name=f"trial-{outcome['number']:04d}",
            tags={
                **self.tags,
                "edgecraft.trial": str(outcome["number"]),
                "edgecraft.state": outcome["state"],
                **({"edgecraft.reason": str(outcome["reason"])[:5000]} if outcome.get("reason") else {}),
            },
        )
        run_id = run.info.run_id
        params = {place: value for place, value in outcome["values"].items()}
        for place, value in params.items():
            self.client.log_param(run_id, _key(place)[:250], value)
        metrics: dict[str, float] = {}
        row = outcome.get("row")
        if row:
            metrics.update(
                {
                    "p50_ms": row["p50"],
                    "p99_ms": row["p99"],
                    "size_bytes": row["size_bytes"],
                    "metric": row["metric"],
                    "peak_mb": row["peak_mb"],
                }
            )
        for name in ("drop", "speedup", "constraint"):
            if outcome.get(name) is not None:
                metrics[name] = outcome[name]
        if outcome.get("proxy"):
            metrics["proxy_metric"] = outcome["proxy"]["metric"]
        for each in outcome.get("rows") or []:
            if each["status"] != "ok":
                continue
            prefix = _key(f"{each['model']}/{each['variant']}/{each['target']}")
            for name, key in (
                ("p50", "p50_ms"),
                ("p99", "p99_ms"),
                ("size_bytes", "size_bytes"),
                ("metric", "metric"),
                ("peak_mb", "peak_mb"),
            ):
                if each[name] is not None:
                    metrics[f"{prefix}/{key}"] = each[name]
        for name, value in metrics.items():
            if value is not None:
                self.client.log_metric(run_id, name, float(value))
        self._log_run_folder(run_id, outcome.get("run_dir"), row)
        self.client.set_terminated(
            run_id,
            "FINISHED" if outcome["state"] == "complete" else "KILLED" if outcome["state"] == "pruned" else "FAILED",
        )
        return run_id

    def _log_run_folder(self, run_id: str, run_dir: str | None, row: dict | None) -> None:
        if not run_dir or not Path(run_dir).is_dir():
            return
        folder = Path(run_dir)
        for name in ("report.html", "results.json", "recipe.yaml"):
            if (folder / name).is_file():
                self.client.log_artifact(run_id, str(folder / name))
        results = folder / "results.json"
        if results.is_file():
            environment = json.loads(results.read_text()).get("environment", {})
            for key, value in _flat(environment, "env").items():
                self.client.set_tag(run_id, key[:250], str(value)[:5000])
        if row and row.get("artifact") and (folder / row["artifact"]).is_file():
            model = folder / row["artifact"]
            self.client.log_artifact(run_id, str(model), artifact_path="model")
            for sidecar in (model.with_suffix(".bin"), model.with_suffix(".onnx.data")):
                if sidecar.is_file():
                    self.client.log_artifact(run_id, str(sidecar), artifact_path="model")

    def finish(self, report: Path, best_recipe: Path | None, best: dict | None) -> None:
        """A run for the study itself: the tune report, the best recipe and the chosen trial's figures."""
        run = self.client.create_run(
            self._experiment_id(), run_name="study", tags={**self.tags, "edgecraft.kind": "study"}
        )
        self.client.log_artifact(run.info.run_id, str(report))
        if best_recipe:
            self.client.log_artifact(run.info.run_id, str(best_recipe))
        if best:
            self.client.log_metric(run.info.run_id, "best_trial", best["number"])
        self.client.set_terminated(run.info.run_id)


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}"))
        return out
    if isinstance(value, list):
        return {prefix: json.dumps(value)[:5000]}
    return {prefix: value}


def track_run(run_dir: Path, uri: str | None = None, experiment: str = "edgecraft-runs") -> str:
    """Log a finished ``edgecraft run`` folder as one MLflow run (what ``edgecraft run --track`` would call):
    the recipe's parameters (its passes, flattened), every row's figures, the environment, the recipe hash, the git
    commit, report.html, results.json and the model files of measured rows. Returns the MLflow run id."""
    run_dir = Path(run_dir)
    tracker = Tracker(uri)
    results = json.loads((run_dir / "results.json").read_text())
    text = results.get("recipe_text") or ""
    tags = {"edgecraft.recipe_sha256": hashlib.sha256(text.encode()).hexdigest(), "edgecraft.run_dir": str(run_dir)}
    commit = git_commit(Path.cwd())
    if commit:
        tags["git.commit"] = commit
    run = tracker.client.create_run(tracker.experiment(experiment), run_name=results.get("name"), tags=tags)
    run_id = run.info.run_id
    recipe = results.get("recipe") or {}
    for key, value in _flat({"passes": recipe.get("passes"), "variants": recipe.get("variants")}, "recipe").items():
        tracker.client.log_param(run_id, _key(key)[:250], str(value)[:6000])
    rows = [row for row in results.get("rows", []) if row.get("status") == "ok" and row.get("measurement")]
    for row in rows:
        m = row["measurement"]
        prefix = _key(f"{row['model']}/{row['variant']}/{row['target']}")
        figures = {
            "p50_ms": m["latency_ms"]["p50"],
            "p99_ms": m["latency_ms"]["p99"],
            "size_bytes": row.get("size_bytes"),
            "metric": (m.get("quality") or {}).get("value"),
            "peak_mb": m.get("process_peak_mb"),
        }
        for name, value in figures.items():
            if value is not None:
                tracker.client.log_metric(run_id, f"{prefix}/{name}", float(value))
        if row.get("artifact") and (run_dir / row["artifact"]).is_file():
            tracker.client.log_artifact(run_id, str(run_dir / row["artifact"]), artifact_path=f"models/{prefix}")
    for key, value in _flat(results.get("environment", {}), "env").items():
        tracker.client.set_tag(run_id, key[:250], str(value)[:5000])
    for name in ("report.html", "results.json"):
        if (run_dir / name).is_file():
            tracker.client.log_artifact(run_id, str(run_dir / name))
    tracker.client.set_terminated(run_id)
    return run_id
