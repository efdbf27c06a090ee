"""The run folder: its unique name, the safe names of its sub-folders, and results.json with its report."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from edgecraft.core.files import write_atomic
from edgecraft.core.results import RunResults
from edgecraft.reports.html import write_report


def folder_name(label: str) -> str:
    """A label (a target with options, a file stem) as one safe path component."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", label).strip("-.") or "unnamed"


def new_run_dir(output_dir: Path, name: str) -> Path:
    """``output_dir/NAME-YYYYmmdd-HHMMSS``, with a suffix when two runs start in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = output_dir / f"{name}-{stamp}"
    suffix = 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = output_dir / f"{name}-{stamp}-{suffix}"


def write_run(results: RunResults, run_dir: Path) -> Path:
    """results.json (replaced whole, never left half-written) and everything rendered from it; the report's path."""
    write_atomic(run_dir / "results.json", results.model_dump_json(indent=2))
    return write_report(results, run_dir)
