"""The ``edgecraft`` command line.

Heavy libraries (torch, runtimes) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecraft.bench.agent.commands import add_agent_commands
from edgecraft.core.errors import EdgecraftError
from edgecraft.reports.settings import GateThresholds
from edgecraft.tune.commands import add_tune_commands


def _run(args: argparse.Namespace) -> int:
    from edgecraft.api import run

    result = run(
        args.recipe,
        output_dir=args.output_dir,
        profile=args.profile,
        pin_cpus=args.pin,
        price_per_hour=args.price_per_hour,
        use_cache=not args.no_cache,
    )
    if args.track or args.mlflow_uri:
        from edgecraft.tune.tracking import track_run

        assert result.run_dir is not None  # run() writes its run folder
        print(f"tracked as MLflow run {track_run(result.run_dir, args.mlflow_uri)}", file=sys.stderr)
    print(result.report_path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgecraft.bench.settings import BenchmarkSpec
    from edgecraft.bench_file import InputOptions, bench_file
    from edgecraft.runner import bench_settings

    settings = bench_settings(BenchmarkSpec(), args.profile, args.pin, args.threads)
    if args.scenario:
        settings = settings.model_copy(update={"scenarios": list(dict.fromkeys(args.scenario))})
    remote_devices = _devices_file(args.devices, needed=args.device is not None or any("@" in t for t in args.target))
    run_dir = bench_file(
        args.model,
        args.target,
        settings,
        inputs=args.inputs,
        evaluator=args.evaluator,
        output_dir=args.output_dir,
        price_per_hour=args.price_per_hour,
        command=args.argv[args.argv.index("bench") + 1 :],
        device=args.device,
        remote_devices=remote_devices,
        input_options=InputOptions(
            shapes=dict(args.shape),
            values=dict(args.input),
            batch_axes=dict(args.batch_axis),
            state_from=dict(args.state),
        ),
        evaluator_outputs=args.evaluator_output,
        console=Console(stderr=True),
    )
    print(run_dir / "report.html")
    return 0


def _named_value(parse: Callable[[str], Any], form: str) -> Callable[[str], tuple[str, Any]]:
    """An argparse type for ``NAME=VALUE`` options: a malformed one is argparse's one-line usage error."""

    def named(text: str) -> tuple[str, Any]:
        name, equals, value = text.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
        try:
            return name.strip(), parse(value.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return named


def _dims(text: str) -> list[int]:
    dims = [int(part) for part in text.split(",")]
    if any(dim <= 0 for dim in dims):
        raise ValueError("every dimension must be a positive integer")
    return dims


def _axis(text: str) -> int | None:
    if text.lower() in ("none", "null"):
        return None
    axis = int(text)
    if axis < 0:
        raise ValueError("an axis is 0 or more, or none")
    return axis


def _devices_file(path: Path | None, needed: bool) -> dict:
    """The remote devices of ``--devices FILE`` (a recipe or a devices file), else of ``$EDGECRAFT_DEVICES``."""
    from edgecraft.devices import load_devices

    path = path or (Path(os.environ["EDGECRAFT_DEVICES"]) if os.environ.get("EDGECRAFT_DEVICES") else None)
    if path is None:
        if needed:
            raise EdgecraftError(
                "a remote device needs its definition: --devices FILE (a recipe with 'devices:', "
                "or a file of them), or EDGECRAFT_DEVICES=FILE"
            )
        return {}
    return load_devices(path)


def _devices(args: argparse.Namespace) -> int:
    """List each configured device: reachable or not, what it is and what it can run. Exit 1 when one is not
    reachable (so a script can wait for its boards). What an agent says is printed on one line, without control
    characters: it is not this program's text."""
    from edgecraft.bench.agent.client import one_line
    from edgecraft.devices import links

    unreachable = 0
    for name, link in links(_devices_file(args.file, needed=True)).items():
        link.connect()
        if link.problem:
            unreachable += 1
            print(f"{name}: not reachable: {link.problem}")
            continue
        description = link.description
        assert description is not None  # connect() without a problem has read it
        cpu = description.get("cpu", {})
        machine = " · ".join(
            str(part)
            for part in (
                cpu.get("machine"),
                cpu.get("model"),
                f"{cpu.get('logical_cores')} cores",
                f"{cpu.get('memory_mb')} MB" if cpu.get("memory_mb") else None,
            )
            if part
        )
        runs = ", ".join(target for target, reason in description.get("targets", {}).items() if reason is None)
        print(f"{name}: reachable at {link.config.url}")
        if link.config.fingerprint:
            print(f"    certificate: {link.config.fingerprint} (pinned, checked)")
        print(f"    machine: {one_line(machine)}")
        if link.emulated:
            print(f"    emulated: {one_line(link.emulated)} (its timings are not device timings)")
        print(f"    runs: {one_line(runs) or 'nothing'}")
    return 1 if unreachable else 0


def _cpus(text: str) -> list[int]:
    from edgecraft.bench.settings import parse_cpus

    try:
        return parse_cpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _protocol_options(parser: argparse.ArgumentParser) -> None:
    """The benchmark options shared by ``run`` and ``bench``."""
    profiles = parser.add_mutually_exclusive_group()
    profiles.add_argument(
        "--quick",
        dest="profile",
        action="store_const",
        const="quick",
        help="quick profile: a fraction of a second per row, one process; for smoke tests, not for decisions",
    )
    profiles.add_argument(
        "--rigorous",
        dest="profile",
        action="store_const",
        const="rigorous",
        help="rigorous profile: longer phases, five interleaved process repetitions; for publication",
    )
    parser.add_argument(
        "--pin",
        type=_cpus,
        metavar="CPUS",
        help="pin every benchmark process to these CPUs, e.g. 1 or 2-3 (recorded with the results)",
    )
    parser.add_argument(
        "--price-per-hour",
        type=_positive,
        metavar="P",
        help="machine price per hour: adds cost per 1M predictions next to throughput",
    )


def _recipe_schema(args: argparse.Namespace) -> int:
    from edgecraft.recipe.schema import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _recipe_validate(args: argparse.Namespace) -> int:
    from edgecraft.recipe.load import load_recipe

    recipe, _ = load_recipe(args.recipe)
    print(
        f"{args.recipe}: ok ({len(recipe.models)} model(s), {len(recipe.variants)} variant(s), "
        f"{len(recipe.targets)} target(s))"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    """``report RUN_DIR`` re-renders one run; ``report compare BASELINE CANDIDATE`` is the CI gate."""
    from pydantic import ValidationError

    from edgecraft.reports.results_file import ResultsError

    try:
        if args.runs[0] == "compare":
            if len(args.runs) != 3:
                raise EdgecraftError("usage: edgecraft report compare BASELINE_RUN CANDIDATE_RUN [options]")
            return _compare(args, Path(args.runs[1]), Path(args.runs[2]))
        if len(args.runs) != 1:
            raise EdgecraftError(f"expected one run folder, got {len(args.runs)} (did you mean 'report compare'?)")
        return _render(args, Path(args.runs[0]))
    except ResultsError as exc:
        raise EdgecraftError(str(exc)) from None
    except ValidationError as exc:  # an out-of-range option value, re-validated against the recipe's model
        error = exc.errors(include_url=False)[0]
        raise EdgecraftError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None


def _render(args: argparse.Namespace, run_dir: Path) -> int:
    from edgecraft.reports.html import write_report
    from edgecraft.reports.results_file import load_results
    from edgecraft.reports.settings import report_settings, with_overrides

    results = load_results(run_dir)
    settings = with_overrides(report_settings(results.recipe), price_per_hour=args.price_per_hour)
    print(write_report(results, run_dir, settings))
    return 0


def _targets(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgecraft.core import formats
    from edgecraft.targets import registry

    table = Table("target", "runs", "available here", box=None, pad_edge=False)
    for runtime, cls in registry.runtimes().items():
        target = cls()
        for device in cls.devices:
            reason = target.unavailable_reason(device)
            table.add_row(
                f"{runtime}:{device}",
                ", ".join(formats.loaded_by(runtime)),
                "yes" if reason is None else f"no: {reason}",
            )
    Console(width=200).print(table)
    return 0


def _compare(args: argparse.Namespace, baseline_dir: Path, candidate_dir: Path) -> int:
    """Exit 0 when every row passes; 1 when a row regresses, is inconclusive or is missing (one line each, with
    why); bad input, including runs that are not comparable, is exit 2 upstream."""
    from edgecraft.reports.compare import compare_runs
    from edgecraft.reports.html import write_comparison
    from edgecraft.reports.results_file import load_results

    baseline, candidate = load_results(baseline_dir), load_results(candidate_dir)
    command_line = {name: getattr(args, name) for name in GateThresholds.model_fields}
    comparison = compare_runs(baseline, candidate, command_line, allow_missing=args.allow_missing)
    out_dir = args.output_dir or candidate_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_comparison(comparison, out_dir)
    for row in comparison.failing:
        for finding in row.failures:
            print(f"{finding.kind}: {row.model} · {row.variant} · {row.target}: {finding.why}")
    print(f"{comparison.outcome}: {comparison.tally()}; thresholds: {comparison.gate.describe()}; report: {path}")
    return 1 if comparison.failing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecraft",
        description="Compress PyTorch models for edge devices, export them to every runtime and measure them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does and skips")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a recipe and write results.json and report.html",
        description="Run a recipe: build or load the models, apply the passes, export every "
        "variant to every target, measure them and write a run folder.",
    )
    run.add_argument("recipe", type=Path, help="recipe YAML file")
    run.add_argument(
        "--output-dir", type=Path, help="where to create the run folder (default: the recipe's output_dir)"
    )
    _protocol_options(run)
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every pass step instead of reusing finished ones from the step cache",
    )
    run.add_argument(
        "--track",
        action="store_true",
        help="log the run to MLflow: parameters, every row's figures, report and model files",
    )
    run.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI for --track (default: "
        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here); implies --track",
    )
    run.set_defaults(handler=_run)

    bench = commands.add_parser(
        "bench",
        help="benchmark an ONNX, OpenVINO IR or TFLite file without a recipe",
        description="Measure a ready model file on one or more targets with the benchmark protocol, on real "
        "inputs (--inputs) or synthetic ones drawn from its signature, and write a run folder with "
        "results.json and report.html.",
    )
    bench.add_argument(
        "model", type=Path, help="model file: .onnx, .xml (OpenVINO IR, .bin beside it), .tflite or .pte (ExecuTorch)"
    )
    bench.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="RUNTIME:DEVICE",
        help="target to measure on; repeat for several (default: the format's CPU runtime)",
    )
    bench.add_argument(
        "--inputs",
        type=Path,
        metavar="NPZ",
        help=".npz file with one array per model input, by name, and optional 'targets' (default: "
        "synthetic inputs drawn from the model's signature; accuracy is then not measured)",
    )
    bench.add_argument(
        "--evaluator",
        metavar="NAME",
        help="classification, agreement, embedding, regression or module:function (default: "
        "classification when --inputs has class targets)",
    )
    bench.add_argument(
        "--evaluator-output",
        action="append",
        default=[],
        metavar="OUTPUT",
        help="the output the evaluator reads (repeat for several); needed where several outputs could hold scores",
    )
    bench.add_argument(
        "--shape",
        action="append",
        type=_named_value(_dims, "NAME=D1,D2,..."),
        default=[],
        metavar="NAME=DIMS",
        help="an input's shape to measure at, batch (1) included, e.g. x=1,3,640,640: needed for inputs with "
        "dynamic axes besides the batch (height, width, sequence) when there is no --inputs",
    )
    bench.add_argument(
        "--input",
        action="append",
        type=_named_value(str, "NAME=VALUE"),
        default=[],
        metavar="NAME=VALUE",
        help="a value fed to an input on every call, e.g. sr=16000 (numbers separated by commas for a vector)",
    )
    bench.add_argument(
        "--batch-axis",
        action="append",
        type=_named_value(_axis, "NAME=AXIS"),
        default=[],
        metavar="NAME=AXIS",
        help="which axis of an input holds the batch (e.g. state=1), or none (e.g. sr=none); default: read from "
        "the file's shapes",
    )
    bench.add_argument(
        "--state",
        action="append",
        type=_named_value(str, "INPUT=OUTPUT"),
        default=[],
        metavar="INPUT=OUTPUT",
        help="a stateful model: feed INPUT from the previous call's OUTPUT (e.g. state=stateN); samples then run "
        "one step at a time, in order, and latency is per step",
    )
    bench.add_argument("--threads", type=int, choices=range(1, 257), metavar="N", help="intra-op threads (default 1)")
    bench.add_argument(
        "--scenario",
        action="append",
        choices=["single_stream", "multi_stream", "offline", "server"],
        default=[],
        help="also run this MLPerf scenario through LoadGen (repeatable; minutes each under the default profile)",
    )
    bench.add_argument(
        "--device",
        metavar="NAME",
        help="measure every target on this remote device's agent (defined in --devices FILE)",
    )
    bench.add_argument(
        "--devices",
        type=Path,
        metavar="FILE",
        help="remote device definitions: a recipe with a 'devices:' section or a file of them "
        "(default: $EDGECRAFT_DEVICES)",
    )
    bench.add_argument("--output-dir", type=Path, default=Path("runs"), help="where to create the run folder")
    _protocol_options(bench)
    bench.set_defaults(handler=_bench)

    targets = commands.add_parser("targets", help="list every target and whether it can run on this machine")
    targets.set_defaults(handler=_targets)

    devices = commands.add_parser(
        "devices",
        help="list the remote devices a recipe or devices file names: reachable or not, what they run",
        description="Ask each configured device's agent what it is and what it can run. Exit 1 when a device is "
        "not reachable.",
    )
    devices.add_argument(
        "file",
        type=Path,
        nargs="?",
        metavar="FILE",
        help="a recipe with a 'devices:' section, or a file of them (default: $EDGECRAFT_DEVICES)",
    )
    devices.set_defaults(handler=_devices)

    add_agent_commands(commands)
    add_tune_commands(commands)

    recipe = commands.add_parser("recipe", help="recipe utilities")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    schema = recipe_commands.add_parser("schema", help="print the recipe JSON Schema")
    schema.set_defaults(handler=_recipe_schema)
    validate = recipe_commands.add_parser("validate", help="check a recipe without running it")
    validate.add_argument("recipe", type=Path)
    validate.set_defaults(handler=_recipe_validate)

    report = commands.add_parser(
        "report",
        help="re-render a run's report, or compare two runs (a CI gate)",
        usage="edgecraft report [--price-per-hour P] RUN_DIR\n"
        "       edgecraft report compare [--max-latency-increase F] [--max-size-increase F] "
        "[--max-accuracy-drop F] [--allow-missing] [--output-dir DIR] BASELINE_RUN CANDIDATE_RUN",
        description="RUN_DIR: re-render report.html, results.csv and summary.md from results.json (nothing is "
        "re-run). compare: write compare.html and compare.md; exit 0 when every row passes, 1 when a row regresses "
        "beyond the thresholds (options, else the baseline recipe's report.gate, else the defaults), is too noisy "
        "to judge (inconclusive) or is missing from the candidate, 2 on bad input or runs that are not comparable.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder, or: compare BASELINE CANDIDATE")
    report.add_argument(
        "--price-per-hour",
        type=float,
        metavar="P",
        help="machine price per hour: adds cost per 1M predictions (default: the recipe's)",
    )
    gate = report.add_argument_group("compare thresholds (fractions; default: the baseline recipe's report.gate)")
    for name, field in GateThresholds.model_fields.items():
        assert field.description is not None  # every threshold is documented (it is its --help)
        gate.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            metavar="F",
            help=f"{field.description.rstrip('.')}; default {field.default:g}".replace("%", "%%"),
        )
    gate.add_argument(
        "--allow-missing",
        action="store_true",
        help="let rows that the candidate lacks or skipped pass (they are still listed); a row that failed still fails",
    )
    gate.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="where compare.html and compare.md go (default: CANDIDATE_RUN)"
    )
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by commands that store their command line
    # TensorFlow (imported by converters, sometimes indirectly) logs its C++ start-up chatter unless told first.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from rich.console import Console
    from rich.logging import RichHandler

    # Libraries log chattily at INFO (ONNX Runtime's quantizer, matplotlib): -v opens only our own loggers.
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("edgecraft").setLevel(logging.INFO if args.verbose else logging.WARNING)  # every part of ours
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
