# ruff: noqa: B007, E741 - the tutorial's code is kept as written
"""learned_optimization's tutorial "Part 1: Introduction" run on meta_opt.

The tutorial (in https://github.com/google/learned_optimization/tree/main/docs/notebooks)
takes LearnableAdam's meta-gradient through a 4-step unroll, then meta-trains it, which
raises the learning rate.

The code below is the tutorial's with the package name replaced in its imports (meta_opt
gives each learned_optimization module path a same-named home), and the 8x8 digits MLP
standing in for the Fashion-MNIST one (bundled with scikit-learn, so the example runs
offline). `LOPT_META_TRAIN_LENGTH` shortens the 2000-step meta-training for tests (the
same variable as in `lopt_seed001_gradient_learner.py`).
"""

import os

import jax
import jax.numpy as jnp

from meta_opt.learned_optimizers import base as lopt_base
from meta_opt.optimizers import base as opt_base
from meta_opt.tasks.image_mlp import ImageMLP_Digits8_Relu32


class image_mlp:  # noqa: N801 - stands in for the tutorial's `image_mlp` module
    ImageMLP_FashionMnist8_Relu32 = staticmethod(ImageMLP_Digits8_Relu32)


task = image_mlp.ImageMLP_FashionMnist8_Relu32()
key = jax.random.PRNGKey(0)

lopt = lopt_base.LearnableAdam()


def meta_loss(theta, key, batch):
    opt = lopt.opt_fn(theta)
    key1, key = jax.random.split(key)
    param = task.init(key1)
    opt_state = opt.init(param)
    for i in range(4):
        param = opt.get_params(opt_state)
        key1, key = jax.random.split(key)
        l, grad = jax.value_and_grad(task.loss)(param, key1, batch)
        opt_state = opt.update(opt_state, grad, l)

    param, state = opt.get_params_state(opt_state)
    key1, key = jax.random.split(key)
    final_loss = task.loss(param, key1, batch)
    return final_loss


theta = lopt.init(key)
batch = next(task.datasets.train)
print("meta-loss", meta_loss(theta, key, batch))

meta_value_and_grad = jax.jit(jax.value_and_grad(meta_loss))

ml, meta_grad = meta_value_and_grad(theta, key, batch)
print("meta-gradient", meta_grad)

theta_opt = opt_base.Adam(1e-2)

key = jax.random.PRNGKey(0)
theta = lopt.init(key)
theta_opt_state = theta_opt.init(theta)

learning_rates = []
learnable_adam_meta_losses = []
for i in range(int(os.environ.get("LOPT_META_TRAIN_LENGTH", 2000))):
    batch = next(task.datasets.train)
    key, key1 = jax.random.split(key)
    theta = theta_opt.get_params(theta_opt_state)
    ml, meta_grad = meta_value_and_grad(theta, key, batch)
    theta_opt_state = theta_opt.update(theta_opt_state, meta_grad, ml)
    learning_rates.append(theta["log_lr"])
    learnable_adam_meta_losses.append(ml)
    if i % 100 == 0:
        print(ml)

print("learning rate", float(jnp.exp(learning_rates[0])), "->", float(jnp.exp(learning_rates[-1])))
