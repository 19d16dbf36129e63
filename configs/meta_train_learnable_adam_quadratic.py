"""Meta-train LearnableAdam's hyperparameters on 10-d quadratics with PES (seconds on CPU).

meta-opt meta-train configs/meta_train_learnable_adam_quadratic.py --set num_steps=200
"""


def get_config() -> dict:
    return {
        "name": "learnable_adam_quadratic",
        "learned_optimizer": "LearnableAdam",
        "estimator": "TruncatedPES",
        "task_families": ["FixedDimQuadraticFamily10"],
        "num_tasks": 8,
        "trunc_length": 10,
        "std": 0.05,
        "min_length": 50,
        "max_length": 100,
        "meta_loss_split": None,
        "theta_lr": 3e-2,
        "num_steps": 300,
        "log_every": 10,
        "checkpoint_every": 100,
    }
