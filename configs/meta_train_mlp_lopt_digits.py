"""Meta-train MLPLOpt with TruncatedPES on the 8x8-digits MLP family (a few CPU minutes).

meta-opt meta-train configs/meta_train_mlp_lopt_digits.py
meta-opt eval-lopt runs/meta_train/mlp_lopt_digits --task ImageMLP_Digits8_Relu32
"""

from meta_opt.outer.meta_train_config import MetaTrainConfig


def get_config() -> MetaTrainConfig:
    return MetaTrainConfig(
        name="mlp_lopt_digits",
        learned_optimizer="MLPLOpt",
        lopt_kwargs={"hidden_size": 32, "hidden_layers": 2},
        estimator="TruncatedPES",
        task_families=("ImageMLPFamily_Digits8_32",),
        num_tasks=8,
        trunc_length=20,
        std=0.01,
        min_length=100,
        max_length=300,
        meta_loss_split="outer_valid",
        theta_optimizer="adam",
        theta_lr=3e-3,
        num_steps=1000,
        log_every=10,
        checkpoint_every=100,
        batch_size=128,
    )
