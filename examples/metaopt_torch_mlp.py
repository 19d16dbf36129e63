"""MetaOpt for PyTorch as a drop-in optimizer for an MLP on the 8x8 digits (seconds on CPU).

Trains the same torch MLP with torch.optim.SGD and with `meta_opt.torch.MetaOpt` (the
`MetaOptConfig` defaults: Adam-scaled disturbances, base learning rate 0, a learned scalar
controller M_0 (H=1); and a real-rollout variant on raw gradients) in the usual torch
loop, then prints the training loss along the way, the test accuracy and the learned
controller.

Run: python examples/metaopt_torch_mlp.py
"""

from __future__ import annotations

import numpy as np
import torch

from meta_opt.data import load
from meta_opt.optimizers import MetaOptConfig
from meta_opt.torch import MetaOpt, make_cost_fn

STEPS, BATCH = 400, 128
REPORT = (0, 100, 200, 399)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10))


def train(model, opt, batches, loss_fn) -> list[float]:
    """The usual loop; MetaOpt also gets the batch's loss as a function of the params."""
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if isinstance(opt, MetaOpt):
            opt.step(make_cost_fn(model, loss_fn, x, y))
        else:
            opt.step()
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    data = load("digits")
    to_tensor = lambda split: (  # noqa: E731
        torch.tensor(data[split]["image"] / 255.0, dtype=torch.float32).squeeze(-1),
        torch.tensor(data[split]["label"], dtype=torch.int64),
    )
    (x_train, y_train), (x_test, y_test) = to_tensor("train"), to_tensor("test")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(x_train), (STEPS, BATCH))
    batches = [(x_train[i], y_train[i]) for i in idx]
    loss_fn = torch.nn.functional.cross_entropy

    optimizers = {
        "SGD lr 0.1": lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        "MetaOpt (defaults)": lambda m: MetaOptConfig().make_torch(m.parameters()),
        "MetaOpt real, raw": lambda m: MetaOpt(m.parameters(), base_learning_rate=0.1, H=8,
                                               HH=4, scale_by_adam_betas=None,
                                               meta_learning_rate=1e-4),
    }
    print(f"digits MLP 64-64-10, {STEPS} steps of batch {BATCH}")
    print(f"{'optimizer':<20}" + "".join(f"{f'loss@{s}':>11}" for s in REPORT)
          + f"{'test acc':>10}")
    for name, make in optimizers.items():
        model = make_model()
        opt = make(model)
        losses = train(model, opt, batches, loss_fn)
        with torch.no_grad():
            acc = float((model(x_test).argmax(-1) == y_test).float().mean())
        print(f"{name:<20}" + "".join(f"{losses[s]:11.4f}" for s in REPORT) + f"{acc:10.3f}")
        if isinstance(opt, MetaOpt):
            metrics = opt.logging_metrics()
            print("  learned controller:", {k: round(v, 5) for k, v in metrics.items()
                                            if k.startswith("M_")})


if __name__ == "__main__":
    main()
