"""Study: the 8x8-digits MLP (scikit-learn's digits, offline), full batch (batch 256), 5
episodes x 300 steps, 3 seeds. SGD, momentum 0.9 and AdamW tuned over half-decade learning-
rate grids against MetaOpt (scalar, diagonal) and DoG, DoWG, Prodigy, Mechanic,
D-Adaptation, all untuned at their defaults. Selection per seed: the last episode's final
train loss (never the test split).

    meta-opt run configs/studies/digits_mlp_fullbatch.py --parallel 2
    meta-opt report runs/digits_mlp_fullbatch
"""

from meta_opt.experiments.study_families import half_decades, standard_study


def get_config():
    return standard_study(
        "digits_mlp_fullbatch", "ImageMLP_Digits8_Relu32", full_batch=True, batch_size=256,
        num_episodes=5, num_iters=300,
        sgd=half_decades(-2, 2), momentum=half_decades(-3, 1), adamw=half_decades(-5, -1))
