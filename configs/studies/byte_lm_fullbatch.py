"""Study: the one-layer byte-level language model, full batch (batch 128), 5 episodes x 300
steps, 3 seeds. SGD, momentum 0.9 and AdamW tuned over half-decade learning-rate grids
against MetaOpt (scalar, diagonal) and DoG, DoWG, Prodigy, Mechanic, D-Adaptation, all
untuned at their defaults. Selection per seed: the last episode's final train loss (never
the test split).

    meta-opt run configs/studies/byte_lm_fullbatch.py --parallel 2
    meta-opt report runs/byte_lm_fullbatch
"""

from meta_opt.experiments.study_families import half_decades, standard_study


def get_config():
    return standard_study(
        "byte_lm_fullbatch", "ByteLM_1L32D32S", full_batch=True, batch_size=128,
        num_episodes=5, num_iters=300,
        sgd=half_decades(-4, 0), momentum=half_decades(-5, 0), adamw=half_decades(-7, -3))
