"""``edgecraft tune``: wired into ``edgecraft/cli.py`` by ``add_tune_commands(commands)``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in 0 … 2³²−1, got {text!r}")
    return value


def _tune(args: argparse.Namespace) -> int:
    from edgecraft.tune.study import plan, tune
    from edgecraft.tune.tracking import Tracker

    plan(args.recipe)  # bad search input fails before MLflow, Ray or any trial starts
    tracker = None if args.no_track else Tracker(args.mlflow_uri)
    result = tune(
        args.recipe,
        trials=args.trials,
        seed=args.seed,
        storage=args.storage,
        output_dir=args.output_dir,
        profile=args.profile,
        tracker=tracker,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    print(f"study {result.study_name}: {result.new_trials} new trial(s); storage {result.storage}")
    if tracker is not None:
        print(f"tracked in MLflow: {tracker.uri}")
    print(f"best recipe: {result.best_recipe}" if result.best_recipe else "best recipe: none (no trial met the budget)")
    print(f"report: {result.report}")
    return 0


def add_tune_commands(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune",
        help="search a recipe's 'search:' space with Optuna under its accuracy budget",
        description="Run (or continue) an Optuna study over the pass parameters the recipe's 'search:' section "
        "declares: each trial runs the recipe with sampled values; the objectives are latency (and size) of the "
        "scored row, the constraint its metric within max_drop of fp32. Writes a tune folder with the study, the "
        "tune report and the best recipe as plain YAML.",
    )
    tune.add_argument("recipe", type=Path, help="recipe YAML file with a 'search:' section")
    tune.add_argument(
        "--trials",
        type=_positive_int,
        metavar="N",
        help="total trials of the study (default: search.trials); a continued study runs only the rest",
    )
    tune.add_argument("--seed", type=_seed, metavar="S", help="sampler seed (default: search.seed)")
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL, e.g. sqlite:///shared.db or postgresql://... (default: study.db in the tune folder)",
    )
    tune.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where the tune folder STUDY-tune goes (default: the recipe's output_dir)",
    )
    profiles = tune.add_mutually_exclusive_group()
    profiles.add_argument(
        "--quick", dest="profile", action="store_const", const="quick", help="quick benchmark profile for every trial"
    )
    profiles.add_argument(
        "--rigorous",
        dest="profile",
        action="store_const",
        const="rigorous",
        help="rigorous benchmark profile for every trial",
    )
    tune.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    tune.add_argument("--no-track", action="store_true", help="do not log trials to MLflow")
    tune.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="trials at a time; more than 1 starts a local Ray (default 1: in this process)",
    )
    tune.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="run trials as tasks on this Ray cluster ('auto': the one this machine belongs to)",
    )
    tune.set_defaults(handler=_tune)
