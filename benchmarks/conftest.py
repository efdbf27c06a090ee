"""The pytest-benchmark suite's fixtures: reference variants built once into .benchmarks/reference."""

from __future__ import annotations

import pytest

from benchmarks.reference import DEFAULT_FOLDER, build


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reference-model", default="digits-cnn", help="built-in model whose variants are measured")


@pytest.fixture(scope="session")
def references(request: pytest.FixtureRequest) -> dict:
    return build(request.config.getoption("--reference-model"), DEFAULT_FOLDER)
