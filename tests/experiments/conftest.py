"""Makes `runner_toy` importable; registers its toy task when the runner's tests run.

`meta-opt run` turns on JAX's persistent compilation cache; the tests keep it off (here
and in the runs they start) unless a test sets its own folder.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("META_OPT_COMPILE_CACHE", "off")

import runner_toy  # noqa: E402  (defines the private _ToySGD optimizer config)


@pytest.fixture(autouse=True, scope="session")
def _register_toy_task():
    runner_toy.register()
