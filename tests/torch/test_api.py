"""The torch MetaOpt's surface: install guard, cost functions from modules, configs, errors,
bfloat16 histories, CUDA tensors and torch.compile'd models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from meta_opt.optimizers import MetaOptConfig, SGDConfig
from meta_opt.torch import MetaOpt, make_cost_fn

F = torch.nn.functional.cross_entropy


def _mlp(dtype=torch.float32, device="cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).to(dtype=dtype, device=device)


def _batches(steps: int, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g, dtype=dtype).to(device),
             torch.randint(0, 3, (16,), generator=g).to(device)) for _ in range(steps)]


def _train(model, opt, batches, use_backward=False):
    losses = []
    for x, y in batches:
        cost_fn = make_cost_fn(model, F, x, y)
        if use_backward:
            opt.zero_grad()
            loss = F(model(x), y)
            loss.backward()
            opt.step(cost_fn)
        else:
            loss = opt.step(cost_fn)
        losses.append(float(loss.detach()))
    return losses


def test_plain_meta_opt_never_imports_torch_and_the_guard_says_how_to_install():
    code = (
        "import sys\n"
        "import meta_opt, meta_opt.optimizers\n"
        "assert 'torch' not in sys.modules, 'meta_opt imported torch'\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "try:\n"
        "    import meta_opt.torch\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert "pip install 'meta_opt[torch]'" in out.stdout


def test_cost_functions_from_a_module_drive_the_same_run_for_list_dict_and_backward():
    """Params as a list, a dict or named_parameters, gradient from step(cost_fn) or from
    loss.backward(): the same trajectory; the cost is the module's loss."""
    batches = _batches(12)
    runs = []
    for kind in ("list", "dict", "named", "backward"):
        model = _mlp()
        params = {"list": list(model.parameters()), "dict": dict(model.named_parameters()),
                  "named": model.named_parameters(), "backward": model.parameters()}[kind]
        opt = MetaOpt(params, base_learning_rate=0.1, H=2, HH=2)
        _train(model, opt, batches, use_backward=kind == "backward")
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        assert opt.history.gpc_cost_valid == 1.0
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=0, atol=0)
    model = _mlp()
    x, y = batches[0]
    cost = make_cost_fn(model, F, x, y)
    torch.testing.assert_close(cost(list(model.parameters())), F(model(x), y))
    torch.testing.assert_close(cost(dict(model.named_parameters())), F(model(x), y))


def test_step_reports_what_is_missing():
    model = _mlp()
    opt = MetaOpt(model.parameters())
    with pytest.raises(ValueError, match=r"no gradients .* call loss.backward\(\) first"):
        opt.step()
    F(model(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long)).backward()
    with pytest.raises(ValueError, match="needs the loss as step\\(cost_fn\\)"):
        opt.step()
    frozen = MetaOpt(model.parameters(), freeze_gpc_params=True)
    frozen.step()  # deployment needs no cost_fn
    with pytest.raises(ValueError, match="got 4 parameter tensors but the module has 2"):
        make_cost_fn(torch.nn.Linear(2, 2), F, torch.zeros(1, 2))(list(model.parameters()))


@pytest.mark.parametrize("kwargs,match", [
    ({"m_method": "dense"}, "unknown m_method 'dense'; choose one of scalar, diagonal, full"),
    ({"H": 0}, r"H \(controller history length\) must be an integer >= 1, got 0"),
    ({"dtype": "int8"}, "dtype must be a floating dtype"),
    ({"grad_clip": -1.0}, "grad_clip must be > 0 or None, got -1.0"),
    ({"m_method": "full", "max_full_controller_bytes": 100}, "needs H\\*n\\*n\\*4"),
    ({"initial_gpc_params": np.zeros(3)}, r"holds a 'scalar' controller of shape \(3,\)"),
])
def test_bad_options_are_refused_with_the_value_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetaOpt(_mlp().parameters(), **kwargs)


def test_parameter_groups_and_mixed_dtypes_are_refused():
    model = _mlp()
    with pytest.raises(ValueError, match="got 2 parameter groups"):
        MetaOpt([{"params": [model[0].weight]}, {"params": [model[2].weight]}])
    with pytest.raises(ValueError, match="share one dtype"):
        MetaOpt([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])
    opt = MetaOpt(model.parameters())
    with pytest.raises(ValueError, match="cannot take a new parameter group"):
        opt.add_param_group({"params": [torch.zeros(2)]})


def test_config_builds_the_same_optimizer_on_both_sides():
    """make_torch keeps the config's defaults (Adam-scaled disturbances, M_0 = -0.01, H=1,
    HH=16) and maps a controller optimizer config onto its torch counterpart."""
    config = MetaOptConfig(meta_optimizer=SGDConfig(learning_rate=0.01, momentum=0.9))
    batches = _batches(10)
    model_a, model_b = _mlp(), _mlp()
    from_config = config.make_torch(model_a.parameters())
    direct = MetaOpt(model_b.parameters(), meta_optimizer=torch.optim.SGD,
                     meta_optimizer_kwargs={"lr": 0.01, "momentum": 0.9})
    assert from_config.H == 1 and from_config.HH == 16
    assert float(from_config.controller[0]) == pytest.approx(-0.01)
    assert isinstance(from_config.meta_optimizer, torch.optim.SGD)
    assert from_config.meta_optimizer.param_groups[0]["momentum"] == 0.9
    _train(model_a, from_config, batches)
    _train(model_b, direct, batches)
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no torch counterpart for the controller optimizer"):
        from meta_opt.optimizers import DoGConfig

        MetaOptConfig(meta_optimizer=DoGConfig()).make_torch(_mlp().parameters())


def test_default_controller_optimizer_and_meta_learning_rate_map_to_torch():
    """The default controller optimizer (AdamW 1e-4, no decay) becomes torch's AdamW, and
    meta_learning_rate replaces its rate; without a controller optimizer it is SGD's."""
    group = MetaOptConfig().make_torch(_mlp().parameters()).meta_optimizer.param_groups[0]
    assert isinstance(MetaOptConfig().make_torch(_mlp().parameters()).meta_optimizer,
                      torch.optim.AdamW)
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-4, 0.0, (0.9, 0.999))
    tuned = MetaOptConfig(meta_learning_rate=3e-4).make_torch(_mlp().parameters())
    assert tuned.meta_optimizer.param_groups[0]["lr"] == 3e-4
    sgd = MetaOptConfig(meta_optimizer=None, meta_learning_rate=0.05).make_torch(
        _mlp().parameters())
    assert isinstance(sgd.meta_optimizer, torch.optim.SGD)
    assert sgd.meta_optimizer.param_groups[0]["lr"] == 0.05


def test_bfloat16_histories_keep_float32_params_and_updates():
    batches = _batches(12)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        model = _mlp()
        opt = MetaOpt(model.parameters(), base_learning_rate=0.1, H=2, HH=2, dtype=dtype)
        runs[dtype] = _train(model, opt, batches)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert opt.history.disturbances.dtype == getattr(torch, dtype)
        assert opt.controller.dtype == torch.float32
    assert runs["bfloat16"] != runs["float32"]
    np.testing.assert_allclose(runs["bfloat16"], runs["float32"], rtol=2e-2)
    # (H + HH) disturbances and HH raw gradients (real rollouts through Adam), 2 bytes each.
    assert opt.memory_bytes()["disturbance_history_bytes"] == (2 + 2 + 2) * 67 * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_give_the_cpu_run():
    runs = []
    for device in ("cpu", "cuda"):
        model = _mlp(torch.float64, device)
        opt = MetaOpt(model.parameters(), base_learning_rate=0.1, H=2, HH=3, m_method="diagonal",
                      dtype="float64", scale_by_adam_betas=(0.9, 0.99))
        _train(model, opt, _batches(15, torch.float64, device))
        assert opt.controller.device.type == device
        runs.append(torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]))
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-10)


def test_compiled_model_works_with_fake_rollouts_and_real_ones_say_why_not():
    """torch.compile'd models (AOTAutograd, here without code generation to keep CI fast)
    give the eager run with fake rollouts; real rollouts need double backward, which
    torch.compile does not support, and say so."""
    batches = _batches(6)
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model = _mlp()
        net = torch.compile(model, backend="aot_eager") if compiled else model
        opt = MetaOpt(model.parameters(), base_learning_rate=0.1, H=2, HH=2,
                      fake_the_dynamics=True)
        _train(net, opt, batches)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-6, atol=1e-7)
    model = _mlp()
    net = torch.compile(model, backend="aot_eager")
    opt = MetaOpt(model.parameters(), base_learning_rate=0.1, H=2, HH=2)
    with pytest.raises(RuntimeError, match="fake_the_dynamics=True"):
        _train(net, opt, batches)
    torch._dynamo.reset()


@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
def test_initial_controller_is_projected_onto_the_ball(m_method):
    """M_0 = -0.5 (times I) with radius 0.1: |M_0| -> 0.1 (scalar), entries -> -0.1
    (diagonal), M_0 scaled to Frobenius norm 0.1 (full)."""
    opt = MetaOpt([torch.zeros(4)], m_method=m_method, initial_m0=-0.5, max_gpc_norm=0.1)
    M0 = opt.controller[0]
    expected = {"scalar": torch.tensor(-0.1), "diagonal": torch.full((4,), -0.1),
                "full": -0.05 * torch.eye(4)}[m_method]
    torch.testing.assert_close(M0, expected)
    assert float(opt.controller[1:].abs().sum()) == 0.0


def test_bfloat16_model_is_evaluated_in_its_own_dtype():
    """Rollouts compute in float32 but hand the cost function bfloat16 parameters."""
    model = _mlp(torch.bfloat16)
    opt = MetaOpt(model.parameters(), base_learning_rate=0.1, H=2, HH=2)
    losses = _train(model, opt, _batches(8, torch.bfloat16))
    assert opt.history.gpc_cost_valid == 1.0 and np.isfinite(losses).all()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert opt.controller.dtype == torch.float32
