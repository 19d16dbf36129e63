"""Tasks (optimization problems) and task families."""

from meta_opt.data.datasets import Datasets, dataset_lru_cache
from meta_opt.tasks.base import Task, TaskFamily, single_task_to_family
from meta_opt.tasks.classification import ClassificationTask
from meta_opt.tasks.conv import ConvTask, VGG16Task
from meta_opt.tasks.families import ImageMLPFamily
from meta_opt.tasks.image_mlp import ImageMLPTask
from meta_opt.tasks.language_model import ByteLMTask
from meta_opt.tasks.quadratics import (
    FixedDimQuadraticFamily,
    NoisyQuadraticConfig,
    NoisyQuadraticFamily,
    NoisyQuadraticTask,
    QuadraticTask,
    TargetQuadraticTask,
)
from meta_opt.tasks.registry import get_task, is_task, list_tasks, register_task
from meta_opt.tasks.test_functions import TEST_FUNCTIONS, BenchmarkFunction

__all__ = [
    "BenchmarkFunction",
    "ByteLMTask",
    "ClassificationTask",
    "ConvTask",
    "Datasets",
    "ImageMLPFamily",
    "ImageMLPTask",
    "FixedDimQuadraticFamily",
    "NoisyQuadraticConfig",
    "NoisyQuadraticFamily",
    "NoisyQuadraticTask",
    "QuadraticTask",
    "TEST_FUNCTIONS",
    "TargetQuadraticTask",
    "Task",
    "VGG16Task",
    "TaskFamily",
    "dataset_lru_cache",
    "get_task",
    "is_task",
    "list_tasks",
    "register_task",
    "single_task_to_family",
]
