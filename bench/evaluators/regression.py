"""Regression and raw values: per-output absolute error and SNR, and one relative-L2 headline."""

from __future__ import annotations

import numpy as np

from edgecraft.bench.evaluators import Evaluator, register, snr_db
from edgecraft.targets.feeds import Feeds


@register
class Regression(Evaluator):
    name = "regression"
    metric = "1 − relative L2 error"
    headline = "relative_accuracy"
    reads_all_outputs = True

    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        """Against the targets where they have the output's shape (one output), else against the fp32 outputs."""
        figures: dict[str, float] = {}
        errors, norms = 0.0, 0.0
        for name, values in outputs.items():
            truth = (
                targets
                if targets is not None and len(outputs) == 1 and targets.shape == values.shape
                else reference[name]
            )
            diff = values.astype(np.float64) - truth.astype(np.float64)
            figures[f"{name}.max_abs_error"] = float(np.abs(diff).max())
            figures[f"{name}.mean_abs_error"] = float(np.abs(diff).mean())
            snr = snr_db(truth, values)
            if snr is not None:
                figures[f"{name}.snr_db"] = snr
            errors += float((diff**2).sum())
            norms += float((truth.astype(np.float64) ** 2).sum())
        figures["relative_accuracy"] = max(0.0, 1.0 - np.sqrt(errors / norms)) if norms else float(errors == 0)
        return figures
