"""User-style model factories and data functions that test recipes name as ``tests.helpers:...``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """A small single-channel 16×16 classifier: stands in for a user's own model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.conv(x)), 1))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def random_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((200, 1, 16, 16)).astype(np.float32), rng.integers(0, 10, 200)


class TokenPooler(nn.Module):
    """A transformer-shaped toy: int64 token ids and an attention mask, a sequence axis, a pooled embedding."""

    def __init__(self, vocabulary: int = 50, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.project = nn.Linear(width, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.project(torch.tanh(pooled))


def token_pooler() -> nn.Module:
    torch.manual_seed(0)
    return TokenPooler()


def token_data() -> dict[str, np.ndarray]:
    """120 padded token sequences of length 12 (real lengths 6-12) in 60 pairs (targets: pair ids); the two
    sequences of a pair differ in one token, so each is the other's nearest neighbour."""
    rng = np.random.default_rng(0)
    first = rng.integers(1, 50, size=(60, 12))
    second = first.copy()
    second[np.arange(60), rng.integers(0, 6, 60)] = rng.integers(1, 50, 60)
    ids = np.stack([first, second], axis=1).reshape(120, 12).astype(np.int64)
    lengths = np.repeat(rng.integers(6, 13, size=60), 2)
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "targets": np.arange(120) // 2}


def write_token_pooler(folder: Path) -> tuple[Path, Path]:
    """``token_pooler`` as ONNX with dynamic batch and sequence, and 32 texts padded to 40 tokens beside it: the
    first 16 of 8 tokens, the last 16 of 30 (a benchmark's ring cycles them in order). (model, inputs .npz)"""
    model = folder / "pooler.onnx"
    data = token_data()
    torch.onnx.export(
        token_pooler().eval(),
        (torch.from_numpy(data["input_ids"][:2]), torch.from_numpy(data["attention_mask"][:2])),
        str(model),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")},
        dynamo=False,
    )
    lengths = np.array([8] * 16 + [30] * 16)
    mask = (np.arange(40)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.random.default_rng(0).integers(1, 50, size=(32, 40)) * mask
    inputs = folder / "tokens.npz"
    np.savez(inputs, input_ids=ids, attention_mask=mask)
    return model, inputs


def wide_classifier() -> nn.Module:
    """A 1000-class classifier on 16 features: the shape of an ImageNet head, for split tests."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1000))


def wide_data() -> tuple[np.ndarray, np.ndarray]:
    """200 labelled samples over 1000 classes: most classes have one member or none."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((200, 16)).astype(np.float32), rng.integers(0, 1000, 200)


def three_hundred() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((300, 1, 16, 16)).astype(np.float32), rng.integers(0, 10, 300)


def mean_output(outputs: dict, reference: dict, targets) -> dict[str, float]:
    """A user's own metric: ``evaluator: tests.helpers:mean_output``."""
    return {"mean": float(np.mean(next(iter(outputs.values()))))}


def raising_factory() -> nn.Module:
    """A user's factory with a bug: ``model.factory: tests.helpers:raising_factory``."""
    raise ValueError("boom: the checkpoint path is wrong")
