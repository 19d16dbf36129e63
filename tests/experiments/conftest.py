"""Makes `runner_toy` importable; registers its toy task when the runner's tests run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import runner_toy  # noqa: E402  (defines the private _ToySGD optimizer config)


@pytest.fixture(autouse=True, scope="session")
def _register_toy_task():
    runner_toy.register()
