"""PyTorch passes on the trained digits-cnn: structured and unstructured pruning, and distillation.

Training here depends on the CPU's numerics (the built-in digits-cnn itself trains to slightly different weights
with another kernel set), so every bar on a trained model is a margin below what was measured, never the value of
one run. The whole file passes with PyTorch's AVX-512 (VNNI), AVX2 and unvectorised kernels, selected with
ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA on one AMD EPYC host (2026-12-05); a test whose outcome moved between
them says by how much.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from edgecraft.compress import registry
from edgecraft.compress.base import Artifact, PassContext
from tests.conftest import accuracy, images, labels, torch_logits


def apply(name: str, digits_cnn: dict, tmp_path, **options):
    context = PassContext(**{**vars(digits_cnn["context"]), "work_dir": tmp_path})
    pass_ = registry.get(name)
    return pass_.apply(digits_cnn["torch"], pass_.config_model(type=name, **options), context)


def zipped_size(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("w", b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    return len(buffer.getvalue())


def count_macs(model: torch.nn.Module, x: np.ndarray) -> int:
    """Multiply-accumulates of one sample through conv and linear layers, counted on the model itself (forward
    hooks), not read from what a pass reports about its work."""
    macs = 0

    def conv(module, _inputs, output) -> None:
        nonlocal macs
        kernel = module.kernel_size[0] * module.kernel_size[1]
        macs += output[0].numel() * (module.in_channels // module.groups) * kernel

    def linear(module, _inputs, output) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.from_numpy(x[:1]))
    for hook in hooks:
        hook.remove()
    return macs


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_structured_pruning_removes_channels_and_leaves_the_input_model_alone(digits_cnn: dict, tmp_path) -> None:
    original = digits_cnn["model"]
    original_parameters = parameters(original)
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    outcome = apply("prune.structured", digits_cnn, tmp_path, ratio=0.5, finetune_epochs=2, lr=2e-3)
    pruned, details = outcome.artifact.model, outcome.details
    assert parameters(original) == original_parameters  # a copy was pruned
    # Counted on the models, not read from the pass's own report.
    assert parameters(original) >= 2 * parameters(pruned)
    assert count_macs(original, x) >= 2 * count_macs(pruned, x)
    assert details["parameters_after"] == parameters(pruned)
    assert pruned.classifier.out_features == 10  # the classifier's outputs are never pruned
    before, after = accuracy(torch_logits(original, x), y), accuracy(torch_logits(pruned, x), y)
    assert details["accuracy_after"] == pytest.approx(after)
    assert after >= before - 0.02  # 98.6 % → 97.5 % measured on an AVX2 host


def test_unstructured_pruning_zeroes_weights_permanently(digits_cnn: dict, tmp_path) -> None:
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    outcome = apply("prune.unstructured", digits_cnn, tmp_path, sparsity=0.6, finetune_epochs=2)
    sparse, details = outcome.artifact.model, outcome.details
    weights = [m.weight.detach() for m in sparse.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.005)  # counted on the weights themselves
    assert parameters(sparse) == parameters(digits_cnn["model"])  # same dense shapes: honest about it
    assert not any(name.endswith("_orig") for name, _ in sparse.named_parameters())  # masks folded in
    assert zipped_size(sparse) < 0.75 * zipped_size(digits_cnn["model"])
    assert "do not run faster" in details["note"]
    # 60 % of the weights gone: without fine-tuning digits-cnn fell to 67 %; two epochs bring it back.
    assert accuracy(torch_logits(sparse, x), y) >= accuracy(torch_logits(digits_cnn["model"], x), y) - 0.02


class RolledTeacher(torch.nn.Module):
    """The trained model with its class scores rolled by one: it "knows" that every digit is the next one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.model(x), 1, dims=1)


def test_distillation_transfers_what_the_teacher_knows(digits_cnn: dict, tmp_path) -> None:
    """A fresh student taught (alpha 1) by a teacher that predicts the next digit learns to predict the next
    digit: the teacher term is what trains it (with alpha 0 it would learn the labels instead: 0.8 % / 79 %)."""
    context = PassContext(**{**vars(digits_cnn["context"]), "work_dir": tmp_path})
    distill = registry.get("distill")
    config = distill.config_model(
        type="distill", student="builtin:digits-cnn", epochs=3, alpha=1.0, lr=1e-2, compare_with_student_alone=False
    )
    teacher = Artifact("torch", digits_cnn["signature"], model=RolledTeacher(digits_cnn["model"]))
    student = distill.apply(teacher, config, context).artifact.model
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    predicted = torch_logits(student, x).argmax(1)
    assert float((predicted == (y + 1) % 10).mean()) >= 0.25  # 41 % after three epochs on an AVX2 host
    assert float((predicted == y).mean()) <= 0.05


def test_distillation_builds_a_half_width_student_and_compares_it(digits_cnn: dict, tmp_path) -> None:
    """Both students must have learned, by a margin that holds on any CPU class: ten epochs take a fresh
    half-width student from chance (10 %) to 88-89 % distilled and 95-96 % alone, measured with PyTorch's AVX-512,
    AVX2 and unvectorised kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA); the bar is 50 %. Two epochs, as
    before, left both near chance (18-19 %) on every one of them, and an AVX-512 AMX host at exactly 18.4 % each."""
    outcome = apply("distill", digits_cnn, tmp_path, student="width:0.5", epochs=10, alpha=0.7, temperature=4)
    details, student = outcome.details, outcome.artifact.model
    assert parameters(student) == details["student_parameters"] <= parameters(digits_cnn["model"]) / 2
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    assert details["student_accuracy"] == pytest.approx(accuracy(torch_logits(student, x), y))
    assert details["student_accuracy"] >= 0.5 and details["student_alone_accuracy"] >= 0.5, details


def test_the_student_alone_is_the_same_student_trained_without_the_teacher(digits_cnn: dict, tmp_path) -> None:
    """With alpha 0 the teacher term vanishes, so the distilled student and the one trained alone (same
    initialisation, seed and schedule) are the same training: equal accuracy, whatever the CPU's numerics. This is
    what makes the pass's comparison fair, and needs no learning to succeed."""
    details = apply("distill", digits_cnn, tmp_path, student="width:0.5", epochs=1, alpha=0.0).details
    assert details["student_accuracy"] == details["student_alone_accuracy"], details


def test_distillation_is_deterministic_under_a_seed(digits_cnn: dict, tmp_path) -> None:
    options = dict(student="width:0.5", epochs=1, compare_with_student_alone=False)
    first = apply("distill", digits_cnn, tmp_path, **options).artifact.model
    second = apply("distill", digits_cnn, tmp_path, **options).artifact.model
    x = images(digits_cnn["splits"], 32)
    assert np.allclose(torch_logits(first, x), torch_logits(second, x), atol=1e-5)


def test_a_pruned_model_can_be_distilled_from_the_original(digits_cnn: dict, tmp_path) -> None:
    pruned = apply("prune.structured", digits_cnn, tmp_path, ratio=0.5).artifact.model
    context = PassContext(**{**vars(digits_cnn["context"]), "work_dir": tmp_path, "original": digits_cnn["model"]})
    distill = registry.get("distill")
    # Two epochs: halving every layer leaves digits-cnn near chance (19 %), and one epoch from there ended at 89 %.
    config = distill.config_model(
        type="distill", student="input", teacher="original", epochs=2, compare_with_student_alone=False
    )
    outcome = distill.apply(Artifact("torch", digits_cnn["signature"], model=pruned), config, context)
    details = outcome.details
    assert details["teacher_parameters"] == sum(p.numel() for p in digits_cnn["model"].parameters())
    assert details["student_parameters"] == sum(p.numel() for p in pruned.parameters())
    # A margin, not a bar tuned from one run (two epochs gave 97 % here, one gave 89 %, a loaded CI box 83 %):
    # distilling from the original must recover most of what halving the layers lost.
    pruned_accuracy = accuracy(torch_logits(pruned, images(digits_cnn["splits"])), labels(digits_cnn["splits"]))
    assert details["student_accuracy"] >= max(0.75, pruned_accuracy + 0.5), (pruned_accuracy, details)


def test_a_model_cannot_teach_itself() -> None:
    with pytest.raises(ValueError, match="teacher: original"):
        registry.passes()["distill"].config_model(type="distill", student="input")


@pytest.mark.parametrize("student", ["width:1.5", "width:x", "builtin:resnet", "mypkg:student"])
def test_bad_student_specs_are_rejected(student: str) -> None:
    config = registry.passes()["distill"].config_model
    with pytest.raises(ValueError, match="student"):
        config(type="distill", student=student)


def test_a_recipe_prunes_before_export(tmp_path) -> None:
    from edgecraft.core.results import RunResults
    from edgecraft.runner import run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: pruned\nmodels: [{builtin: digits-cnn}]\n"
        "passes: [{type: prune.structured, ratio: 0.5, finetune_epochs: 1}]\n"
        "variants: [{name: fp32}]\n"
    )
    results = RunResults.model_validate_json(
        (run_recipe(recipe, output_dir=tmp_path, quick=True) / "results.json").read_text()
    )
    record = results.passes[0]
    assert record.name == "prune.structured" and record.variant is None and record.seconds > 0
    assert results.models[0].parameters == record.details["parameters_after"]
    assert results.rows[0].status == "ok"
    assert results.rows[0].measurement.fidelity.max_abs_diff <= 1e-4  # the pruned model exports faithfully


@pytest.mark.slow
def test_a_built_in_model_trains_to_the_same_weights_in_any_process(tmp_path) -> None:
    """The model cache's key assumes that training is reproducible, including the initial weights."""
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ['EDGECRAFT_CACHE_DIR'] = sys.argv[1]\n"
        "from edgecraft.compress.zoo import REFERENCE_MODELS\nfrom edgecraft import data, model_source\n"
        "digits = data.digits(REFERENCE_MODELS['digits-cnn'].input_shape).head(256)\n"
        "model = model_source.builtin_model('digits-cnn', digits, lambda *_: None)\n"
        "print(repr(float(sum(p.double().abs().sum() for p in model.parameters()))))"
    )
    weights = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True, check=True
        ).stdout
        for name in ("first", "second")
    ]
    assert weights[0] == weights[1]
