"""meta_opt.distributed: meta-training on Ray (one learner actor, N worker actors).

Ray is imported only when actors start, so this package imports without it.
"""

from meta_opt.distributed.meta_training import (
    LearnerActor,
    RayMetaTraining,
    WorkerActor,
    to_numpy,
    worker_base_key,
    worker_init_key,
    worker_step_key,
)

__all__ = [
    "LearnerActor",
    "RayMetaTraining",
    "WorkerActor",
    "to_numpy",
    "worker_base_key",
    "worker_init_key",
    "worker_step_key",
]
