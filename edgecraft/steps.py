"""Step execution: a chain of passes applied in order, each step served by the step cache when an identical
step (same input, pass, config, code and libraries) finished before, and each recorded for the report."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from edgecraft.compress import registry as pass_registry
from edgecraft.compress.base import Artifact, PassContext, PassOutcome
from edgecraft.compress.verify import verify_artifact
from edgecraft.compress.zoo import REFERENCE_MODELS
from edgecraft.core.results import PassRecord
from edgecraft.step_cache import StepCache, step_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Keyed:
    """An artifact and its step-cache key (the chain of content hashes that produced it)."""

    artifact: Artifact
    key: str


def skeletons(original: Any) -> Any:
    """What a cached PyTorch step is rebuilt into, by its ``Artifact.architecture``: a copy of the recipe's
    own model (pruned or not: the stored shapes reshape it) or a fresh built-in."""

    def build(architecture: str) -> Any:
        kind, _, name = architecture.partition(":")
        if kind == "builtin":
            return REFERENCE_MODELS[name].build()
        if original is None:
            raise ValueError(f"no PyTorch model to rebuild a cached {architecture!r} model into")
        return copy.deepcopy(original)

    return build


class StepRunner:
    """Applies chains of passes through one step cache and keeps a ``PassRecord`` of every step."""

    def __init__(self, cache: StepCache, progress: Progress):
        self.cache = cache
        self.progress = progress
        self.records: list[PassRecord] = []

    def apply(
        self, model: str, variant: str | None, current: Keyed, entries: list[Any], context: PassContext, folder: Path
    ) -> Keyed:
        """Run ``entries`` in order from ``current``; the first failing pass raises."""
        for index, entry in enumerate(entries):
            step = pass_registry.get(entry.type)
            key = step_key(current.key, step, entry)
            step_dir = folder / f"{index}-{entry.type}"
            step_dir.mkdir(parents=True, exist_ok=True)
            cached = self.cache.load(key, step_dir, skeletons(context.original))
            if cached:
                log.info(
                    "%s · %s · %s: finished before, reused from the step cache (%s)",
                    model,
                    variant or "shared",
                    entry.type,
                    key,
                )
                outcome, seconds = cached.outcome, cached.seconds
            else:
                outcome, seconds = self._run(model, step, entry, current.artifact, context, step_dir)
                # Every pass's output file must load in its format's runtime before the pass counts as done
                # (checked once: a cached step was checked before it was stored).
                notes = verify_artifact(outcome.artifact, entry.type)
                if notes:
                    outcome.details["output_check"] = "; ".join(notes)
                self.cache.store(key, outcome, step_dir, seconds)
            details = dict(outcome.details)
            control = details.pop("accuracy_control", None)  # typed in the record, not a flat fact
            self.records.append(
                PassRecord(
                    model=model,
                    variant=variant,
                    name=entry.type,
                    config=entry.model_dump(mode="json"),
                    seconds=seconds,
                    details=details,
                    accuracy_control=control,
                    cached=cached is not None,
                )
            )
            current = Keyed(outcome.artifact, key)
        return current

    def _run(
        self, model: str, step: Any, entry: Any, artifact: Artifact, context: PassContext, step_dir: Path
    ) -> tuple[PassOutcome, float]:
        task = self.progress.add_task(f"{model}: {entry.type}", total=None)

        def report(description: str, done: int, total: int) -> None:
            self.progress.update(task, description=f"{model}: {description}", completed=done, total=total)

        step_context = PassContext(**{**vars(context), "work_dir": step_dir, "progress": report})
        start = time.perf_counter()
        try:
            outcome = step.apply(artifact, entry, step_context)
        finally:
            self.progress.remove_task(task)
        return outcome, time.perf_counter() - start
