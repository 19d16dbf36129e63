# ruff: noqa: B007, B018, B905, E741, F401, F811, I001 - the notebooks' code is kept as written
"""The learned_optimization tutorials' code cells, run as written but for the package name.

The learned_optimization tutorials (part 1: tasks, optimizers, meta-gradients; part 2:
datasets, tasks, task families; part 4: meta-training with `SingleMachineGradientLearner`
and the central-learner / worker loop) port to meta_opt by replacing `learned_optimization`
with `meta_opt` in their imports; `jax.tree_map`, which JAX removed, is spelled
`jax.tree_util.tree_map`. Shell cells (`!pip install ...`) are left out. Each `# --- cell N`
below is cell N of that notebook; the checks after a cell are the test's own.

The environment provides what the notebooks assume: Fashion-MNIST files (tiny, self-made in
the official format, their MD5s registered as the official ones for the test; nothing is
downloaded), a stand-in `haiku` module (imported by the notebooks, never used), a
non-interactive matplotlib backend, and `LOPT_META_TRAIN_LENGTH`, the variable part 4 reads
"so this file can be tested".
"""

import dataclasses
import hashlib
import os
import sys
import types

import numpy as np
import pytest

from meta_opt.data import checksums, idx


@pytest.fixture
def tutorial_environment(monkeypatch, tmp_path):
    """Fashion-MNIST under $META_OPT_DATA (400 train / 100 test images), haiku, Agg."""
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    md5 = {}
    for split, n in (("train", 400), ("t10k", 100)):
        y = rng.integers(0, 10, n)
        # Class-dependent brightness, so the data is learnable.
        x = np.clip(rng.normal(20 * y[:, None, None] + 30, 20, (n, 28, 28)), 0, 255)
        for kind, arr in (("images-idx3", x.astype(np.uint8)), ("labels-idx1", y.astype(np.uint8))):
            path = folder / f"{split}-{kind}-ubyte.gz"
            idx.write_idx(path, arr)
            md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    specs = tuple(
        dataclasses.replace(s, md5=md5[s.name], urls=())
        for s in checksums.OFFICIAL_FILES["fashion_mnist"]
    )
    monkeypatch.setitem(checksums.OFFICIAL_FILES, "fashion_mnist", specs)
    monkeypatch.setenv("META_OPT_DATA", str(tmp_path))
    monkeypatch.setitem(sys.modules, "haiku", types.ModuleType("haiku"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("LOPT_META_TRAIN_LENGTH", "3")


@pytest.mark.slow
def test_part1_tasks_optimizers_and_meta_gradients(tutorial_environment):
    # --- cell 0
    import numpy as np
    import jax.numpy as jnp
    import jax
    from matplotlib import pylab as plt

    # --- cell 2
    import numpy as np
    import jax.numpy as jnp
    import jax
    from matplotlib import pylab as plt

    from meta_opt.outer_trainers import full_es
    from meta_opt.outer_trainers import truncated_pes
    from meta_opt.outer_trainers import gradient_learner
    from meta_opt.outer_trainers import truncation_schedule

    from meta_opt.tasks import quadratics
    from meta_opt.tasks.fixed import image_mlp
    from meta_opt.tasks import base as tasks_base
    from meta_opt.tasks.datasets import base as datasets_base

    from meta_opt.learned_optimizers import base as lopt_base
    from meta_opt.learned_optimizers import mlp_lopt
    from meta_opt.optimizers import base as opt_base

    from meta_opt import optimizers
    from meta_opt import eval_training

    import haiku as hk
    import tqdm

    # --- cell 3
    key = jax.random.PRNGKey(0)
    task = image_mlp.ImageMLP_FashionMnist8_Relu32()

    params = task.init(key)
    jax.tree_util.tree_map(lambda x: x.shape, params)

    # check (the test's own):
    assert jax.tree_util.tree_map(lambda x: x.shape, params) == {
        "Dense_0": {"kernel": (64, 32), "bias": (32,)},
        "Dense_1": {"kernel": (32, 10), "bias": (10,)},
    }

    # --- cell 4
    batch = next(task.datasets.train)
    jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), batch)

    # check (the test's own):
    shapes = jax.tree_util.tree_map(lambda x: x.shape, batch)
    assert shapes == {"image": (128, 8, 8, 1), "label": (128,)}

    # --- cell 5
    key, key1 = jax.random.split(key)

    loss = task.loss(params, key1, batch)
    loss

    # --- cell 6
    loss, grad = jax.value_and_grad(task.loss)(params, key1, batch)
    jax.tree_util.tree_map(lambda x: x.shape, grad)

    # --- cell 7
    grad_fn = jax.jit(jax.value_and_grad(task.loss))
    key = jax.random.PRNGKey(0)
    params = task.init(key)
    lr = 0.1

    for i in range(1000):
      key, key1 = jax.random.split(key)
      batch = next(task.datasets.train)
      l, grads = grad_fn(params, key1, batch)
      # apply SGD to each parameter
      params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
      if i % 100 == 0:
        test_l = task.loss(params, key, next(task.datasets.test))
        print(f"train loss at {i}: {float(l)}. Test loss: {float(test_l)}")

    # check (the test's own):
    print("SGD: last train loss", float(l))
    assert float(l) < 1.5  # 1000 SGD steps learn the brightness classes (chance: ln 10 = 2.3)

    # --- cell 8
    fake_params = {"a": jnp.zeros((2,))}

    opt = opt_base.SGD(1e-4)
    opt_state = opt.init(fake_params)
    opt_state

    # --- cell 9
    opt = opt_base.Adam(1e-4)
    opt_state = opt.init(fake_params)
    opt_state

    # --- cell 10
    fake_grads = {"a": jnp.ones((2,))}
    fake_loss = 10.

    next_opt_state = opt.update(opt_state, fake_grads, fake_loss)
    opt.get_params(next_opt_state)

    # check (the test's own):
    np.testing.assert_allclose(opt.get_params(next_opt_state)["a"], [-1e-4, -1e-4], rtol=1e-3)

    # --- cell 11
    task = image_mlp.ImageMLP_FashionMnist8_Relu32()
    key = jax.random.PRNGKey(0)
    params = task.init(key)

    opt = opt_base.Adam(1e-2)
    opt_state = opt.init(params)

    for i in range(10):
      batch = next(task.datasets.train)
      key, key1 = jax.random.split(key)
      params = opt.get_params(opt_state)
      loss, grads = jax.value_and_grad(task.loss)(params, key1, batch)
      opt_state = opt.update(opt_state, grads, loss)
      print(loss)

    # --- cell 12
    task = image_mlp.ImageMLP_FashionMnist8_Relu32()
    key = jax.random.PRNGKey(0)
    params = task.init(key)

    opt = opt_base.Adam(1e-2)
    opt_state = opt.init(params)


    @jax.jit
    def update(opt_state, key, batch):
      key, key1 = jax.random.split(key)
      params, model_state = opt.get_params_state(opt_state)
      loss, grads = jax.value_and_grad(task.loss)(params, key1, batch)
      opt_state = opt.update(opt_state, grads, loss=loss)

      return opt_state, key, loss


    for i in range(10):
      batch = next(task.datasets.train)
      opt_state, key, loss = update(opt_state, key, batch)
      print(loss)

    # --- cell 13
    import flax
    from typing import Any


    @flax.struct.dataclass
    class MomentumOptState:
      params: Any
      model_state: Any
      iteration: jnp.ndarray
      momentums: Any


    class MomentumOptimizer(opt_base.Optimizer):

      def __init__(self, lr=1e-3, momentum=0.9):
        super().__init__()
        self._lr = lr
        self._momentum = momentum

      def get_state(self, opt_state):
        return opt_state.model_state

      def get_params(self, opt_state):
        return opt_state.params

      def init(self, params, model_state=None, **kwargs):
        return MomentumOptState(
            params=params,
            model_state=model_state,
            momentums=jax.tree_util.tree_map(jnp.zeros_like, params),
            iteration=jnp.asarray(0, dtype=jnp.int32))

      def update(self, opt_state, grads, loss, model_state=None, **kwargs):
        struct = jax.tree_util.tree_structure(grads)
        flat_momentum = jax.tree_util.tree_leaves(opt_state.momentums)
        flat_grads = jax.tree_util.tree_leaves(grads)
        flat_params = jax.tree_util.tree_leaves(opt_state.params)

        output_params = []
        output_momentums = []
        for m, g, p in zip(flat_momentum, flat_grads, flat_params):
          next_m = m * self._momentum + g * (1 - self._momentum)
          next_p = p - next_m * self._lr
          output_params.append(next_p)
          output_momentums.append(next_m)
        return MomentumOptState(
            params=jax.tree_util.tree_unflatten(struct, output_params),
            model_state=model_state,
            iteration=opt_state.iteration + 1,
            momentums=jax.tree_util.tree_unflatten(struct, output_params),
        )


    opt = MomentumOptimizer(lr=1)
    opt_state = opt.init({"a": 1.0, "b": 2.0})
    opt.update(opt_state, {"a": -1.0, "b": 1.0}, 1.0)

    # check (the test's own):
    new_state = opt.update(opt_state, {"a": -1.0, "b": 1.0}, 1.0)
    assert (float(new_state.params["a"]), float(new_state.params["b"])) == pytest.approx((1.1, 1.9))
    assert int(new_state.iteration) == 1

    # --- cell 14
    lopt = lopt_base.LearnableAdam()
    theta = lopt.init(key)
    theta

    # check (the test's own):
    assert set(theta) == {"log_lr", "one_minus_beta1", "one_minus_beta2", "log_epsilon"}

    # --- cell 15
    opt = lopt.opt_fn(theta)
    opt_state = opt.init({"p": jnp.zeros([
        2,
    ])})

    # --- cell 16
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


    batch = next(task.datasets.train)
    meta_loss(theta, key, batch)

    # --- cell 17
    meta_value_and_grad = jax.jit(jax.value_and_grad(meta_loss))

    ml, meta_grad = meta_value_and_grad(theta, key, batch)
    meta_grad

    # check (the test's own):
    assert float(meta_grad["log_lr"]) < 0  # the notebook's observation: raise the learning rate

    # --- cell 18
    theta_opt = opt_base.Adam(1e-2)

    key = jax.random.PRNGKey(0)
    theta = lopt.init(key)
    theta_opt_state = theta_opt.init(theta)

    learning_rates = []
    learnable_adam_meta_losses = []
    for i in range(2000):
      batch = next(task.datasets.train)
      key, key1 = jax.random.split(key)
      theta = theta_opt.get_params(theta_opt_state)
      ml, meta_grad = meta_value_and_grad(theta, key, batch)
      theta_opt_state = theta_opt.update(theta_opt_state, meta_grad, ml)
      learning_rates.append(theta["log_lr"])
      learnable_adam_meta_losses.append(ml)
      if i % 100 == 0:
        print(ml)

    # check (the test's own):
    print("lr", float(jnp.exp(learning_rates[0])), float(jnp.exp(learning_rates[-1])))
    first, last = learnable_adam_meta_losses[:100], learnable_adam_meta_losses[-100:]
    print("meta-loss", np.mean(first), np.mean(last))
    assert float(learning_rates[-1]) > float(learning_rates[0]) + 1.0
    assert np.mean(last) < np.mean(first)

    # --- cell 19
    import numpy as np
    from matplotlib import pylab as plt

    plt.semilogy(np.exp(learning_rates))
    plt.ylabel("learning rate")
    plt.xlabel("meta-iteration")


def test_part2_datasets_tasks_and_task_families(tutorial_environment):
    # --- cell 1
    import numpy as np
    import jax.numpy as jnp
    import jax
    from matplotlib import pylab as plt

    from meta_opt.outer_trainers import full_es
    from meta_opt.outer_trainers import truncated_pes
    from meta_opt.outer_trainers import gradient_learner
    from meta_opt.outer_trainers import truncation_schedule

    from meta_opt.tasks import quadratics
    from meta_opt.tasks.fixed import image_mlp
    from meta_opt.tasks import base as tasks_base
    from meta_opt.tasks.datasets import base as datasets_base

    from meta_opt.learned_optimizers import base as lopt_base
    from meta_opt.learned_optimizers import mlp_lopt
    from meta_opt.optimizers import base as opt_base

    from meta_opt import optimizers
    from meta_opt import eval_training

    import haiku as hk
    import tqdm

    # --- cell 2
    import numpy as np


    def data_iterator():
      bs = 3
      while True:
        batch = {"data": np.zeros([bs, 5])}
        yield batch


    @datasets_base.dataset_lru_cache
    def get_datasets():
      return datasets_base.Datasets(
          train=data_iterator(),
          inner_valid=data_iterator(),
          outer_valid=data_iterator(),
          test=data_iterator())


    ds = get_datasets()
    next(ds.train)

    # check (the test's own):
    assert get_datasets() is ds and next(ds.train)["data"].shape == (3, 5)

    # --- cell 3
    # First we construct data iterators.
    def noise_datasets():

      def _fn():
        while True:
          yield np.random.normal(size=[4, 2]).astype(dtype=np.float32)

      return datasets_base.Datasets(
          train=_fn(), inner_valid=_fn(), outer_valid=_fn(), test=_fn())


    class MyTask(tasks_base.Task):
      datasets = noise_datasets()

      def loss(self, params, rng, data):
        return jnp.sum(jnp.square(params - data))

      def init(self, key):
        return jax.random.normal(key, shape=(4, 2))


    task = MyTask()
    key = jax.random.PRNGKey(0)
    key1, key = jax.random.split(key)
    params = task.init(key)

    task.loss(params, key1, next(task.datasets.train))

    # check (the test's own):
    assert np.isfinite(float(task.loss(params, key1, next(task.datasets.train))))

    # --- cell 4
    PRNGKey = jnp.ndarray
    TaskParams = jnp.ndarray


    class FixedDimQuadraticFamily(tasks_base.TaskFamily):
      """A simple TaskFamily with a fixed dimensionality but sampled target."""

      def __init__(self, dim: int):
        super().__init__()
        self._dim = dim
        self.datasets = None

      def sample(self, key: PRNGKey) -> TaskParams:
        # Sample the target for the quadratic task.
        return jax.random.normal(key, shape=(self._dim,))

      def task_fn(self, task_params: TaskParams) -> tasks_base.Task:
        dim = self._dim

        class _Task(tasks_base.Task):

          def loss(self, params, rng, _):
            # Compute MSE to the target task.
            return jnp.sum(jnp.square(task_params - params))

          def init(self, key):
            return jax.random.normal(key, shape=(dim,))

        return _Task()

    # --- cell 5
    task_family = FixedDimQuadraticFamily(10)
    key = jax.random.PRNGKey(0)
    task_cfg = task_family.sample(key)
    task = task_family.task_fn(task_cfg)

    key1, key = jax.random.split(key)
    params = task.init(key)
    batch = None
    task.loss(params, key, batch)

    # --- cell 6
    def train_task(cfg, key):
      task = task_family.task_fn(cfg)
      key1, key = jax.random.split(key)
      params = task.init(key1)
      opt = opt_base.Adam()

      opt_state = opt.init(params)

      for i in range(4):
        params = opt.get_params(opt_state)
        loss, grad = jax.value_and_grad(task.loss)(params, key, None)
        opt_state = opt.update(opt_state, grad, loss=loss)
      loss = task.loss(params, key, None)
      return loss


    task_cfg = task_family.sample(key)
    print("single loss", train_task(task_cfg, key))

    keys = jax.random.split(key, 32)
    task_cfgs = jax.vmap(task_family.sample)(keys)
    losses = jax.vmap(train_task)(task_cfgs, keys)
    print("multiple losses", losses)

    # check (the test's own):
    assert losses.shape == (32,) and bool(jnp.all(jnp.isfinite(losses)))

    # --- cell 7
    single_task = image_mlp.ImageMLP_FashionMnist8_Relu32()
    task_family = tasks_base.single_task_to_family(single_task)

    # --- cell 8
    cfg = task_family.sample(key)
    print("config only contains a dummy value:", cfg)
    task = task_family.task_fn(cfg)
    # Tasks are the same
    assert task == single_task


@pytest.mark.slow
def test_part4_meta_training_with_gradient_learner(tutorial_environment):
    # --- cell 0
    import numpy as np
    import jax.numpy as jnp
    import jax
    from matplotlib import pylab as plt

    from meta_opt.outer_trainers import full_es
    from meta_opt.outer_trainers import truncated_pes
    from meta_opt.outer_trainers import gradient_learner
    from meta_opt.outer_trainers import truncation_schedule

    from meta_opt.tasks import quadratics
    from meta_opt.tasks.fixed import image_mlp
    from meta_opt.tasks import base as tasks_base

    from meta_opt.learned_optimizers import base as lopt_base
    from meta_opt.learned_optimizers import mlp_lopt
    from meta_opt.optimizers import base as opt_base

    from meta_opt import optimizers
    from meta_opt import training
    from meta_opt import eval_training

    import haiku as hk
    import tqdm

    # --- cell 1
    theta_opt = opt_base.Adam(1e-3)

    lopt = mlp_lopt.MLPLOpt()
    max_length = 300
    trunc_sched = truncation_schedule.LogUniformLengthSchedule(
        min_length=100, max_length=max_length)


    def grad_est_fn(task_family):
      return truncated_pes.TruncatedPES(
          task_family=task_family,
          learned_opt=lopt,
          trunc_sched=trunc_sched,
          num_tasks=4,
          trunc_length=50,
          random_initial_iteration_offset=max_length)


    mlp_task_family = tasks_base.single_task_to_family(
        image_mlp.ImageMLP_FashionMnist8_Relu32())

    gradient_estimators = [
        grad_est_fn(quadratics.FixedDimQuadraticFamily(10)),
        grad_est_fn(mlp_task_family),
    ]

    outer_trainer = gradient_learner.SingleMachineGradientLearner(
        lopt, gradient_estimators, theta_opt)

    # --- cell 2
    key = jax.random.PRNGKey(0)
    outer_trainer_state = outer_trainer.init(key)
    jax.tree_util.tree_map(lambda x: jnp.asarray(x).shape, outer_trainer_state)

    # check (the test's own):
    assert len(outer_trainer_state.gradient_estimator_states) == 2

    # --- cell 3
    next_state, loss, metrics = outer_trainer.update(
        outer_trainer_state, key, with_metrics=False)

    # --- cell 4
    losses = []
    import tqdm

    import os
    # Pulling this from an environment variable so this file can be tested.
    outer_train_steps = int(os.environ.get("LOPT_META_TRAIN_LENGTH", 500))

    for i in tqdm.trange(outer_train_steps):
      outer_trainer_state, loss, metrics = outer_trainer.update(
          outer_trainer_state, key, with_metrics=False)
      losses.append(loss)

    # --- cell 5
    plt.plot(losses)

    # check (the test's own):
    print("meta-losses", [float(x) for x in losses])
    assert len(losses) == 3 and all(np.isfinite(float(x)) for x in losses)
    assert int(outer_trainer_state.gradient_learner_state.outer_iteration) == 3

    # --- cell 6
    metrics

    # --- cell 7
    theta_opt = opt_base.Adam(1e-3)
    central_learner = gradient_learner.GradientLearner(lopt, theta_opt)

    # --- cell 8
    key = jax.random.PRNGKey(0)
    central_state = central_learner.init(key)
    jax.tree_util.tree_map(lambda x: jnp.asarray(x).shape, central_state)

    # --- cell 9
    worker_weights = central_learner.get_state_for_worker(central_state)

    # --- cell 10
    max_length = 300
    trunc_sched = truncation_schedule.LogUniformLengthSchedule(
        min_length=100, max_length=max_length)


    def grad_est_fn(task_family):
      return truncated_pes.TruncatedPES(
          task_family=task_family,
          learned_opt=lopt,
          trunc_sched=trunc_sched,
          num_tasks=16,
          trunc_length=50,
          random_initial_iteration_offset=max_length)


    mlp_task_family = tasks_base.single_task_to_family(
        image_mlp.ImageMLP_FashionMnist8_Relu32())

    gradient_estimators = [
        grad_est_fn(quadratics.FixedDimQuadraticFamily(10)),
        grad_est_fn(mlp_task_family)
    ]

    # --- cell 11
    unroll_states = [
        grad.init_worker_state(worker_weights, key=jax.random.fold_in(key, i))
        for (i, grad) in enumerate(gradient_estimators)
    ]

    # --- cell 12
    out = gradient_learner.gradient_worker_compute(
        worker_weights,
        gradient_estimators,
        unroll_states,
        key=key,
        with_metrics=False)

    # --- cell 13
    [x for x in dir(out) if not x.startswith("__") and x != "replace"]

    # --- cell 14
    grads_list = [out.to_put]
    central_state, metrics = central_learner.update(central_state, grads_list)

    # --- cell 15
    losses = []

    outer_train_steps = int(os.environ.get("LOPT_META_TRAIN_LENGTH", 500))

    for i in tqdm.trange(outer_train_steps):
      worker_weights = central_learner.get_state_for_worker(central_state)

      key1, key = jax.random.split(key)
      out = gradient_learner.gradient_worker_compute(
          worker_weights,
          gradient_estimators,
          unroll_states,
          key=key1,
          with_metrics=False)
      # extract the next unroll state output for the next iteration.
      unroll_states = out.unroll_states

      central_state, metrics = central_learner.update(central_state, [out.to_put])
      losses.append(out.to_put.mean_loss)

    # --- cell 16
    plt.plot(losses)

    # check (the test's own):
    assert len(losses) == 3 and all(np.isfinite(float(x)) for x in losses)
    assert int(central_state.outer_iteration) == 4
    assert [g.trace_count for g in gradient_estimators] == [1, 1]

