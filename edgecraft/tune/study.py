"""The Optuna driver: the tune folder, the seeded (and resumable) study, trials run here or on Ray, and the outputs
(the tune report and the best recipe as plain YAML)."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edgecraft.core.errors import EdgecraftError
from edgecraft.recipe.load import load_recipe
from edgecraft.recipe.schema import Recipe, rebase_files
from edgecraft.recipe.yaml_loader import locate, parse
from edgecraft.tune.space import ParameterSpec, SearchSpec, concrete, parse_place, pass_entry

if TYPE_CHECKING:
    from edgecraft.bench.settings import ProfileName

log = logging.getLogger(__name__)
OUTCOME = "outcome"  # the trial's outcome dict, in the trial's user attributes
INTERRUPTED = "interrupted"  # a trial left running by a killed tune: failed, and its parameters queued again


@dataclass
class TuneResult:
    folder: Path
    report: Path
    best_recipe: Path | None
    study_name: str
    storage: str
    new_trials: int


@dataclass
class Plan:
    """A checked recipe with a search section: what every trial needs."""

    path: Path
    recipe: Recipe
    data: dict[str, Any]
    search: SearchSpec


def plan(path: Path) -> Plan:
    """Read the recipe and check its ``search:`` section against it: every parameter must exist in its pass and
    each end of its range (each choice) must give a valid recipe. Problems are one line each, exit 2."""
    recipe, text = load_recipe(path)
    data, lines = parse(text)
    if recipe.search is None:
        raise EdgecraftError(f"{path}: search: the recipe has no 'search:' section, nothing to tune")
    search = recipe.search

    def fail(place: tuple, problem: str) -> EdgecraftError:
        field, line = locate(("search", *place), lines, missing=False)
        return EdgecraftError(f"{path}:{line}: {field}: {problem}" if line else f"{path}: {field}: {problem}")

    for place, parameter in search.parameters.items():
        where = ("parameters", place)
        try:
            entry = pass_entry(data, place)
        except (KeyError, IndexError) as exc:
            raise fail(where, str(exc).strip("'\"")) from None
        _, _, field = parse_place(place)
        _check_values(path, recipe, data, place, entry, field, parameter, functools.partial(fail, where))
    named = {name for name in search.variants_named() if name is not None}
    variant = search.variant
    if variant is None:
        if len(named) != 1:
            raise fail(
                ("variant",),
                f"the parameters name {len(named)} variants ({', '.join(sorted(named))}): "
                "say which one is scored with 'variant:'",
            )
        variant = next(iter(named))
    elif variant not in {v.name for v in recipe.variants}:
        raise fail(
            ("variant",), f"no variant named {variant!r} (variants: {', '.join(v.name for v in recipe.variants)})"
        )
    labels = [entry.label for entry in recipe.targets_for(next(v for v in recipe.variants if v.name == variant))]
    target = search.target or (labels[0] if labels else None)
    if target not in labels:
        raise fail(("target",), f"variant {variant!r} does not run on {target!r} (it runs on {', '.join(labels)})")
    models = [model.display_name for model in recipe.models]
    if search.model is not None and search.model not in models:
        raise fail(("model",), f"no model named {search.model!r} (models: {', '.join(models)})")
    resolved = search.model_copy(
        update={
            "variant": variant,
            "target": target,
            "model": search.model or models[0],
            "study": search.study or recipe.name,
        }
    )
    return Plan(path, recipe, data, resolved)


def _check_values(
    path: Path,
    recipe: Recipe,
    data: dict,
    place: str,
    entry: dict,
    field: str,
    parameter: ParameterSpec,
    fail: Callable[[str], EdgecraftError],
) -> None:
    from pydantic import ValidationError

    from edgecraft.compress import registry as pass_registry

    kind = entry.get("type") if isinstance(entry, dict) else None
    cls = pass_registry.passes().get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise fail(f"the pass at {place.rsplit('.', 1)[0]} has no known type ({kind!r})")
    fields = [name for name in cls.config_model.model_fields if name != "type"]
    if field not in fields:
        raise fail(f"{kind} has no parameter {field!r} (its parameters: {', '.join(fields)})")
    for value in parameter.extremes():
        try:
            Recipe.model_validate(concrete(data, {place: value}), context={"base_dir": path.parent})
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            raise fail(
                f"{kind}.{field} = {value!r} is not valid: {error['msg'].removeprefix('Value error, ')}"
            ) from None


def tune_folder(plan_: Plan, output_dir: Path | None) -> Path:
    """``OUTPUT_DIR/STUDY-tune``: a fixed name, so that a tune started again finds its study there."""
    folder = Path(output_dir or plan_.recipe.output_dir).resolve() / f"{plan_.search.study}-tune"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sampler_for(search: SearchSpec, seed: int) -> Any:
    import optuna

    kind = search.sampler
    if kind == "auto":
        kind = "tpe" if len(search.objectives) == 1 else "nsga2"
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid = {}
    for place, spec in search.parameters.items():
        if spec.choice is not None:
            grid[place] = spec.choice
        else:
            bounds = spec.float_range or spec.int_range
            assert bounds is not None  # ParameterSpec: exactly one of choice, float and int
            low, high = bounds
            step = spec.step or 1
            grid[place] = [low + i * step for i in range(int((high - low) / step + 1e-9) + 1)]
    return optuna.samplers.GridSampler(grid, seed=seed)


def suggest(trial: Any, search: SearchSpec) -> dict[str, Any]:
    values = {}
    for place, spec in search.parameters.items():
        if spec.choice is not None:
            values[place] = trial.suggest_categorical(place, spec.choice)
        elif spec.float_range is not None:
            values[place] = trial.suggest_float(place, *spec.float_range, log=spec.log, step=spec.step)
        else:
            assert spec.int_range is not None  # ParameterSpec: exactly one of choice, float and int
            values[place] = trial.suggest_int(place, *spec.int_range, log=spec.log, step=int(spec.step or 1))
    return values


def tune(
    recipe_path: Path,
    *,
    trials: int | None = None,
    seed: int | None = None,
    storage: str | None = None,
    output_dir: Path | None = None,
    profile: ProfileName | None = None,
    tracker: Any = None,
    workers: int = 1,
    ray_address: str | None = None,
    run_trial: Callable[..., dict] | None = None,
) -> TuneResult:
    """Run (or continue) the study of ``recipe_path``'s search section; write the tune report and best recipe.

    ``run_trial`` replaces the trial function (tests); ``tracker`` (``tracking.Tracker``) logs every trial."""
    import optuna
    from optuna.trial import TrialState

    from edgecraft.tune import trial as trial_module

    plan_ = plan(Path(recipe_path))
    search = plan_.search
    if trials is not None:
        search = search.model_copy(update={"trials": trials})
    seed = search.seed if seed is None else seed
    folder = tune_folder(plan_, output_dir)
    default_storage = storage is None
    storage = storage or f"sqlite:///{folder / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=search.study,
            sampler=sampler_for(search, seed),
            directions=["minimize"] * len(search.objectives),
            load_if_exists=True,
        )
    except Exception as exc:  # noqa: BLE001 - a storage URL that does not open
        raise EdgecraftError(f"--storage {storage}: cannot open the study: {str(exc).splitlines()[0]}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental in Optuna: names only label the dashboard's axes
        study.set_metric_names(list(search.objectives))
    if default_storage:  # only this tune uses its own file: a trial still 'running' there was killed
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(stale._trial_id, INTERRUPTED, True)
            study.tell(stale.number, state=TrialState.FAIL)
            study.enqueue_trial(stale.params)
    finished = [
        t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)
    ]
    remaining = max(0, search.trials - len(finished))
    search_data = search.model_dump(mode="json", by_alias=True)
    run = run_trial or trial_module.run_trial
    trials_dir = folder / "trials"
    arguments: dict[str, Any] = dict(
        data=plan_.data,
        base_dir=str(plan_.path.parent.resolve()),
        search=search_data,
        trials_dir=str(trials_dir),
        profile=profile,
    )
    if tracker is not None:
        tracker.start(search.study, plan_)
    runner = None
    if ray_address or workers > 1:
        from edgecraft.tune.distributed import RayTrials

        runner = RayTrials(ray_address, workers, run)
    new = 0
    while new < remaining:
        asked = [study.ask() for _ in range(min(search.batch, remaining - new))]
        jobs = [(trial, suggest(trial, search)) for trial in asked]
        calls = [dict(arguments, values=values, number=trial.number) for trial, values in jobs]
        # Each outcome is told as soon as it arrives: a tune killed mid-batch keeps every finished trial.
        outcomes = runner.map(calls) if runner else (run(**call) for call in calls)
        for (trial, _), outcome in zip(jobs, outcomes):
            _tell(study, trial, outcome)
            if tracker is not None:
                tracker.log_trial(outcome, search)
            print(
                f"trial {trial.number}: {outcome['state']}"
                + (f" ({outcome.get('reason')})" if outcome.get("reason") else ""),
                flush=True,
            )
        new += len(jobs)
    if runner:
        runner.close()
    return finish(study, plan_, folder, storage, new, tracker)


def _tell(study: Any, trial: Any, outcome: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(OUTCOME, json.loads(json.dumps(outcome, default=str)))
    if outcome["state"] == "complete":
        trial.set_constraint("accuracy_drop_over_budget", outcome["constraint"])  # ≤ 0: feasible
        study.tell(trial, outcome["values_objective"])
    elif outcome["state"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def trial_table(study: Any, search: SearchSpec) -> list[dict[str, Any]]:
    """Every trial as plain data for the report (from the study alone, so a resumed tune shows them all)."""
    table = []
    for trial in study.get_trials(deepcopy=False):
        outcome = trial.user_attrs.get(OUTCOME, {})
        table.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "params": trial.params,
                "interrupted": bool(trial.user_attrs.get(INTERRUPTED)),
                "values": trial.values,
                "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
                "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
                if trial.datetime_complete and trial.datetime_start
                else None,
                **{
                    key: outcome.get(key)
                    for key in (
                        "metric",
                        "drop",
                        "feasible",
                        "reason",
                        "rows",
                        "row",
                        "proxy",
                        "reference",
                        "metric_name",
                        "speedup",
                        "run_dir",
                        "node",
                        "ray_node",
                        "prepare_interval",
                        "measure_interval",
                    )
                },
            }
        )
    return table


def chosen(table: list[dict[str, Any]], search: SearchSpec) -> dict[str, Any] | None:
    """The chosen point: among feasible complete trials, the lowest first objective (ties: the next objectives,
    then the higher metric, then the earlier trial). When that objective is latency, every trial within
    ``latency_tolerance`` of the fastest ties with it, and the most accurate of them, then the smallest, then the
    fastest is chosen: a winner by less than the measurement's noise would be a coin toss, while metric and size
    are deterministic. Either way the chosen trial is on the feasible Pareto front (``pareto``): a trial that
    dominates it would be in the same band and sort first."""
    feasible = [t for t in table if t["state"] == "complete" and t["feasible"]]
    if not feasible:
        return None
    best = min(feasible, key=lambda t: (*t["values"], -(t["metric"] or 0), t["number"]))
    if search.objectives[0] != "latency" or not search.latency_tolerance:
        return best
    band = [t for t in feasible if t["values"][0] <= best["values"][0] * (1 + search.latency_tolerance)]
    return min(band, key=lambda t: (-(t["metric"] or 0), _size(t), *t["values"], t["number"]))


def _size(trial: dict[str, Any]) -> float:
    return (trial.get("row") or {}).get("size_bytes") or 0


def pareto(table: list[dict[str, Any]]) -> set[int]:
    """Trial numbers on the feasible Pareto front of (−metric, every objective, size): as the report says, a
    trial is dominated only by one at least as accurate, as fast and as small."""
    points = {
        t["number"]: (-(t["metric"] or 0), *t["values"], _size(t))
        for t in table
        if t["state"] == "complete" and t["feasible"]
    }
    return {
        n
        for n, p in points.items()
        if not any(all(a <= b for a, b in zip(q, p)) and q != p for m, q in points.items() if m != n)
    }


def finish(study: Any, plan_: Plan, folder: Path, storage: str, new: int, tracker: Any = None) -> TuneResult:
    from edgecraft.reports.tune import TuneReport, write_tune_report

    search = plan_.search
    assert search.study is not None  # plan() names the study (default: the recipe's name)
    table = trial_table(study, search)
    best = chosen(table, search)
    best_path = None
    if best is not None:
        best_data = concrete(plan_.data, {place: best["params"][place] for place in search.parameters})
        best_data = rebase_files(best_data, plan_.path.parent, folder)  # it is written in the tune folder
        best_path = folder / "best-recipe.yaml"
        header = (
            f"# The chosen point of study {search.study!r} (trial {best['number']}): "
            f"{search.variant} on {search.target}.\n# Run it with: edgecraft run {best_path.name}\n"
        )
        best_path.write_text(header + yaml.safe_dump(best_data, sort_keys=False))
    report = write_tune_report(
        TuneReport(
            study=search.study,
            recipe=str(plan_.path),
            storage=storage,
            objectives=list(search.objectives),
            statistic=search.statistic,
            latency_tolerance=search.latency_tolerance,
            variant=search.variant,
            target=search.target,
            model=search.model,
            max_drop=search.max_drop,
            parameters={k: v.model_dump(by_alias=True, exclude_defaults=True) for k, v in search.parameters.items()},
            trials=table,
            chosen=best["number"] if best else None,
            pareto=sorted(pareto(table)),
            best_recipe=best_path.name if best_path else None,
        ),
        folder,
    )
    if tracker is not None:
        tracker.finish(report, best_path, best)
    return TuneResult(folder, report, best_path, search.study, storage, new)
