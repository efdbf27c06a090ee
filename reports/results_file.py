"""Reading a run folder's results.json back, as strictly as it was written: the reports' entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from edgecraft.core.results import RunResults
from edgecraft.reports.settings import ReportSettings, report_settings


class ResultsError(Exception):
    """A run folder or results file that cannot be reported on; the message names the file and the field."""


def _problem(exc: ValidationError) -> str:
    """The first error of a validation as ``field: message``, the field a dotted path from the top of the file."""
    error = exc.errors(include_url=False)[0]
    prefix = ("recipe", "report") if exc.title == ReportSettings.__name__ else ()
    field = ".".join(str(part) for part in (*prefix, *error["loc"])) or "(top level)"
    # A NaN or infinity written by a JSON library that allows them comes back as null.
    hint = " (null: a NaN or an infinity?)" if error["type"] == "float_type" and error["input"] is None else ""
    return f"{field}: {error['msg']}{hint}"


def _validated(label: str, validate: Callable[[], RunResults]) -> RunResults:
    try:
        results = validate()
        report_settings(results.recipe)  # fail now, naming the field, rather than halfway through rendering
    except ValidationError as exc:
        raise ResultsError(f"{label}: not a valid results file: {_problem(exc)}") from None
    return results


def load_results(run_dir: Path) -> RunResults:
    """Read ``run_dir/results.json``; a missing or malformed file raises ``ResultsError`` naming the field."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ResultsError(f"{path}: not found (is {run_dir} a run folder?)")
    return _validated(str(path), lambda: RunResults.model_validate_json(path.read_text(encoding="utf-8")))


def check_results(results: RunResults, label: str) -> None:
    """Check a run built or changed in memory as strictly as a loaded file (pydantic does not validate assignments,
    so a NaN or a zero p50 set afterwards would slip through); ``ResultsError`` names ``label`` and the field."""
    _validated(label, lambda: RunResults.model_validate(results.model_dump()))
