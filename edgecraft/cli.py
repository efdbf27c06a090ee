"""The ``edgecraft`` command line. Heavy libraries (torch, runtimes) are imported only by the commands that need them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edgecraft.errors import EdgecraftError

OUR_PACKAGES = ("edgecraft", "compress", "targets", "bench", "reports")


def _run(args: argparse.Namespace) -> int:
    from edgecraft.runner import run_recipe

    run_dir = run_recipe(args.recipe, output_dir=args.output_dir, quick=args.quick)
    print(run_dir / "report.html")
    return 0


def _recipe_schema(args: argparse.Namespace) -> int:
    from edgecraft.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _recipe_validate(args: argparse.Namespace) -> int:
    from edgecraft.recipe import load_recipe

    recipe, _ = load_recipe(args.recipe)
    print(f"{args.recipe}: ok ({len(recipe.models)} model(s), {len(recipe.variants)} variant(s), "
          f"{len(recipe.targets)} target(s))")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from reports.html import write_report
    from reports.schema import RunResults

    results_path = args.run_dir / "results.json"
    if not results_path.is_file():
        raise EdgecraftError(f"{results_path}: not found (is {args.run_dir} a run folder?)")
    try:
        results = RunResults.model_validate_json(results_path.read_text())
    except ValidationError as exc:
        raise EdgecraftError(f"{results_path}: not a valid results file: {exc.errors()[0]['msg']}") from None
    print(write_report(results, args.run_dir))
    return 0


def _targets(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from targets import registry

    table = Table("target", "runs", "available here", box=None, pad_edge=False)
    for runtime, cls in registry.runtimes().items():
        target = cls()
        for device in cls.devices:
            reason = target.unavailable_reason(device)
            table.add_row(f"{runtime}:{device}", ", ".join(cls.accepts), "yes" if reason is None else f"no: {reason}")
    Console(width=200).print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecraft",
        description="Compress PyTorch models for edge devices, export them to every runtime and measure them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does and skips")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a recipe and write results.json and report.html",
                              description="Run a recipe: build or load the models, apply the passes, export every "
                                          "variant to every target, measure them and write a run folder.")
    run.add_argument("recipe", type=Path, help="recipe YAML file")
    run.add_argument("--output-dir", type=Path, help="where to create the run folder (default: the recipe's output_dir)")
    run.add_argument("--quick", action="store_true", help="few benchmark runs: for smoke tests, not for decisions")
    run.set_defaults(handler=_run)

    targets = commands.add_parser("targets", help="list every target and whether it can run on this machine")
    targets.set_defaults(handler=_targets)

    recipe = commands.add_parser("recipe", help="recipe utilities")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    schema = recipe_commands.add_parser("schema", help="print the recipe JSON Schema")
    schema.set_defaults(handler=_recipe_schema)
    validate = recipe_commands.add_parser("validate", help="check a recipe without running it")
    validate.add_argument("recipe", type=Path)
    validate.set_defaults(handler=_recipe_validate)

    report = commands.add_parser("report", help="re-render report.html from a run folder's results.json")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # TensorFlow (imported by converters, sometimes indirectly) logs its C++ start-up chatter unless told first.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from rich.logging import RichHandler

    # Libraries log chattily at INFO (ONNX Runtime's quantizer, matplotlib): -v opens only our own loggers.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(show_time=False, show_path=False)])
    for package in OUR_PACKAGES:
        logging.getLogger(package).setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.handler(args)
    except EdgecraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
