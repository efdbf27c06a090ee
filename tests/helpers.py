"""User-style model factories and data functions that test recipes name as ``tests.helpers:...``."""

from __future__ import annotations

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
