"""Mutation check: break each pass (and the gate and the cache) in a small, plausible way, one at a time, and
show that a test fails. Not part of the test suite; run from the repository root:

    .venv/bin/python -m benchmarks.mutations            # every mutation (about 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks.mutations alpha-zero # one of them

Each mutation is applied to a fresh copy of the committed tree (the working tree is never touched), and the
tests named for it run there; the line printed names the tests that caught it. Exit 1 if any mutation survives.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "no-channels-removed",
        "structured pruning that removes no channels",
        "compress/passes/pruning.py",
        "        pruning_ratio=ratio,\n",
        "        pruning_ratio=0.0,\n",
        ("tests/test_torch_passes.py::test_structured_pruning_removes_channels_and_leaves_the_input_model_alone",),
    ),
    Mutation(
        "alpha-zero",
        "distillation with alpha = 0 (the teacher term dropped)",
        "compress/passes/distillation.py",
        "temperature, alpha = config.temperature, config.alpha",
        "temperature, alpha = config.temperature, 0.0",
        ("tests/test_torch_passes.py::test_distillation_transfers_what_the_teacher_knows",),
    ),
    Mutation(
        "calibration-skipped",
        "static quantization calibrated on one blank sample instead of the data",
        "compress/passes/onnx_quantization.py",
        "                self._feeds = iter(samples)\n",
        "                self._feeds = iter([{k: 0 * v for k, v in samples[0].items()}])\n",
        (
            "tests/test_passes.py::test_static_int8_is_qdq_smaller_and_as_accurate",
            "tests/test_passes.py::test_quantized_outputs_stay_close_to_fp32",
        ),
    ),
    Mutation(
        "gate-ignores-accuracy",
        "a compare gate that ignores accuracy",
        "reports/compare.py",
        "            if -accuracy > gate.max_accuracy_drop + FLOAT_SLACK:",
        "            if False and -accuracy > gate.max_accuracy_drop + FLOAT_SLACK:",
        ("tests/test_compare_gate.py",),
    ),
    Mutation(
        "key-without-config",
        "a step-cache key without the pass config",
        "edgecraft/step_cache.py",
        '        step.name,\n        config.model_dump(mode="json"),\n',
        "        step.name,\n",
        ("tests/test_step_cache_safety.py",),
    ),
    Mutation(
        "float-layers-read-rounded",
        "ONNX Runtime's layers kept in float still read their producers' rounded int8 outputs",
        "compress/passes/onnx_quantization.py",
        "            _read_float_inputs(output, float_layers)\n",
        "            pass\n",
        ("tests/test_accuracy_control.py::test_an_onnxruntime_layer_kept_in_float_reads_unrounded_inputs",),
    ),
    Mutation(
        "all-float-unchecked",
        "an accuracy-aware search that never checks that every op in float is fp32",
        "compress/accuracy_control.py",
        "    if abs(judgement.metric - fp32) > _FLOAT_METRIC or judgement.error > _FLOAT_ERROR:\n",
        "    if False:\n",
        ("tests/test_accuracy_control.py::test_a_fallback_that_cannot_reach_fp32_fails_naming_what_stayed_quantized",),
    ),
    Mutation(
        "rounding-not-learned",
        "weight rounding that ignores what it learned (round to nearest)",
        "compress/passes/weight_rounding.py",
        "    return torch.where(pinned, scaled.round().clamp(-qmax, qmax), learned)\n",
        "    return scaled.round().clamp(-qmax, qmax)\n",
        ("tests/test_weight_rounding.py::test_learned_rounding_lowers_the_output_error_of_a_trained_layer",),
    ),
    Mutation(
        "qat-untrained",
        "QAT whose optimiser does not move the weights (learning rate 1e-12)",
        "compress/passes/qat.py",
        "TrainingConfig(epochs=config.epochs, lr=config.lr,",
        "TrainingConfig(epochs=config.epochs, lr=1e-12,",
        (
            "tests/test_qat_distillation.py::"
            "test_self_distillation_recovers_what_static_ptq_loses_on_a_two_output_model_without_labels",
        ),
    ),
    Mutation(
        "executorch-relu6-unfused",
        "convert.executorch int8 with XNNPACK's quantizer alone (a ReLU6 shares its convolution's observer)",
        "compress/passes/executorch.py",
        "base = XNNPACKQuantizer if dynamic else _clamp_fusing_quantizer()",
        "base = XNNPACKQuantizer if dynamic else XNNPACKQuantizer",
        ("tests/test_executorch_pass.py::test_int8_quantizes_a_convolution_and_its_relu6_as_one_op",),
    ),
)


def committed_tree(folder: Path) -> None:
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def check(mutation: Mutation) -> bool:
    """True when a test fails on the mutated tree (the mutation is caught)."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        tree = Path(tmp)
        committed_tree(tree)
        path = tree / mutation.file
        source = path.read_text()
        if source.count(mutation.original) != 1:
            sys.exit(f"{mutation.name}: the text to mutate is not found once in {mutation.file}; update the script")
        path.write_text(source.replace(mutation.original, mutation.mutated))
        env = {**os.environ, "PYTHONPATH": str(tree)}  # the mutated packages shadow the installed ones
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *mutation.tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
    failed = sorted(set(re.findall(r"^FAILED (\S+)", completed.stdout, re.MULTILINE)))
    if failed:
        print(f"caught    {mutation.name}: {mutation.what}\n          by {', '.join(failed)}")
    else:
        print(f"SURVIVED  {mutation.name}: {mutation.what} (exit {completed.returncode})\n{completed.stdout[-1500:]}")
    return bool(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mutations", description=__doc__.split("\n\n")[0])
    known = [m.name for m in MUTATIONS]
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"mutations to check (default: all): {', '.join(known)}"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    results = [check(mutation) for mutation in chosen]
    print(f"{sum(results)} of {len(results)} mutations caught")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
