"""Makes `runner_toy` importable and registers its toy task and optimizer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import runner_toy  # noqa: E402,F401  (registers _RunnerToy and _ToySGD)
