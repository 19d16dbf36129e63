"""Study: the 8x8-digits MLP (scikit-learn's digits, offline), stochastic (batch 128), 5
episodes x 300 steps, 3 seeds. SGD, momentum 0.9 and AdamW tuned over half-decade learning-
rate grids against MetaOpt (scalar, diagonal) and DoG, DoWG, Prodigy, Mechanic,
D-Adaptation, all untuned at their defaults. Selection per seed: the validation loss on a
held-out part of the training data (never the test split).

    meta-opt run configs/studies/digits_mlp_stochastic.py --parallel 2
    meta-opt report runs/digits_mlp_stochastic
"""

from meta_opt.experiments.study_families import half_decades, standard_study


def get_config():
    return standard_study(
        "digits_mlp_stochastic", "ImageMLP_Digits8_Relu32", full_batch=False, batch_size=128,
        num_episodes=5, num_iters=300,
        sgd=half_decades(-2, 2), momentum=half_decades(-4, 1), adamw=half_decades(-5, -1))
