"""Meta-training: truncation schedules, truncated inner training, gradient estimators
(FullGrad, FullES, TruncatedES, TruncatedGrad, TruncatedPES) and gradient learners."""

from meta_opt.outer.checkpoint import CheckpointError, MetaTrainCheckpointer
from meta_opt.outer.eval_training import multi_task_training_curves, single_task_training_curves
from meta_opt.outer.full_es import FullES
from meta_opt.outer.full_grad import FullGrad
from meta_opt.outer.gradient_estimator import (
    GradientEstimator,
    GradientEstimatorOut,
    WorkerWeights,
)
from meta_opt.outer.gradient_learner import (
    AggregatedGradient,
    GradientLearner,
    GradientLearnerState,
    OuterState,
    SingleMachineGradientLearner,
    SingleMachineState,
    WorkerComputeOut,
    gradient_worker_compute,
    meta_step_key,
)
from meta_opt.outer.meta_train_config import MetaTrainConfig
from meta_opt.outer.truncated_es import TruncatedES
from meta_opt.outer.truncated_grad import TruncatedGrad
from meta_opt.outer.truncated_pes import PESWorkerState, TruncatedPES
from meta_opt.outer.truncated_step import (
    TruncatedUnrollOut,
    TruncatedUnrollState,
    VectorizedTruncatedStep,
)
from meta_opt.outer.truncation_schedules import (
    ConstantTruncationSchedule,
    LogUniformLengthSchedule,
    NeverEndingTruncationSchedule,
    TruncationSchedule,
)

__all__ = [
    "AggregatedGradient",
    "CheckpointError",
    "ConstantTruncationSchedule",
    "FullES",
    "FullGrad",
    "GradientEstimator",
    "GradientEstimatorOut",
    "GradientLearner",
    "GradientLearnerState",
    "LogUniformLengthSchedule",
    "MetaTrainCheckpointer",
    "MetaTrainConfig",
    "NeverEndingTruncationSchedule",
    "OuterState",
    "PESWorkerState",
    "SingleMachineGradientLearner",
    "SingleMachineState",
    "TruncatedES",
    "TruncatedGrad",
    "TruncatedPES",
    "TruncatedUnrollOut",
    "TruncatedUnrollState",
    "TruncationSchedule",
    "VectorizedTruncatedStep",
    "WorkerComputeOut",
    "WorkerWeights",
    "gradient_worker_compute",
    "meta_step_key",
    "multi_task_training_curves",
    "single_task_training_curves",
]
