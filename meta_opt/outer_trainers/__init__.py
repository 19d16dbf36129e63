"""learned_optimization's `outer_trainers` module paths, as aliases of `meta_opt.outer`.

`from meta_opt.outer_trainers import truncated_pes, truncation_schedule` gives the modules
`meta_opt.outer.truncated_pes` and `meta_opt.outer.truncation_schedules` themselves, so
learned_optimization code ports by replacing the package name alone.
"""

from meta_opt.module_aliases import alias_submodules
from meta_opt.outer import (
    full_es,
    full_grad,
    gradient_learner,
    truncated_es,
    truncated_grad,
    truncated_pes,
    truncated_step,
    truncation_schedules,
)

truncation_schedule = truncation_schedules  # learned_optimization's (singular) name

alias_submodules(
    __name__,
    {
        "full_es": full_es,
        "full_grad": full_grad,
        "gradient_learner": gradient_learner,
        "truncated_es": truncated_es,
        "truncated_grad": truncated_grad,
        "truncated_pes": truncated_pes,
        "truncated_step": truncated_step,
        "truncation_schedule": truncation_schedules,
    },
)

__all__ = [
    "full_es",
    "full_grad",
    "gradient_learner",
    "truncated_es",
    "truncated_grad",
    "truncated_pes",
    "truncated_step",
    "truncation_schedule",
]
