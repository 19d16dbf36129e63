"""The seed-002 example script runs as written (shortened by env var).

The seed-001 script (examples/lopt_seed001_gradient_learner.py) is the tutorial part 4
notebook code that test_tutorial_notebooks.py already runs (with the same imports), so it is not run
twice here.
"""

import runpy
from pathlib import Path

import jax.numpy as jnp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_seed_002_flow_meta_gradient_raises_learnable_adam_learning_rate(monkeypatch):
    monkeypatch.setenv("LOPT_META_TRAIN_LENGTH", "30")
    g = runpy.run_path(str(EXAMPLES / "lopt_seed002_meta_gradient.py"))
    assert float(g["meta_grad"]["log_lr"]) < 0  # the seed's observation: raise the lr
    assert float(g["learning_rates"][-1]) > float(g["learning_rates"][0]) + 0.1
    assert all(bool(jnp.isfinite(m)) for m in g["learnable_adam_meta_losses"])
