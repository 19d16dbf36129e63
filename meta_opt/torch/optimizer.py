"""MetaOpt as a `torch.optim.Optimizer`: `opt.step(cost_fn)` with `cost_fn(params) -> loss`.

Training is a dynamical system driven by the disturbances w_t = T(g_t). The played update
adds a learned linear controller over the last H disturbances to a base step,

    x_{t+1} = x_t - lambda x_t - eta_t w_t + sum_{i<H} M_i * w_{t-i},

and, from step H + HH on, before playing step t, M takes one step of its own optimizer on
the cost C(M) of replaying the last HH steps with the current M (`rollout.py`). The same
equations, options and defaults as the JAX `meta_opt.optimizers.metaopt`.

References:
  Chen, Agarwal, Hazan, "Online control for meta-optimization", NeurIPS 2023.
  Agarwal, Bullins, Hazan, Kakade, Singh, "Online control with adversarial
  disturbances", ICML 2019 (GPC).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from meta_opt.torch import controller as ctrl
from meta_opt.torch.controller_file import save_controller
from meta_opt.torch.disturbance import DisturbanceTransform
from meta_opt.torch.flat import FlatLayout
from meta_opt.torch.rollout import Rollouts
from meta_opt.torch.state import MetaOptHistory

DEFAULT_MAX_FULL_CONTROLLER_BYTES = 2 * 1024**3
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

CostFunction = Callable[[Any], torch.Tensor]


class MetaOpt(torch.optim.Optimizer):
    """Online-control meta-optimizer (gradient perturbation controller) for PyTorch.

    Option names and defaults are those of `MetaOptConfig`.

    Args:
      params: `model.parameters()`, a list of tensors, or a dict / `named_parameters()`
        (cost functions then receive a dict name -> tensor, else a list).
      base_learning_rate: eta_t, a float or a function step -> float (a torch LR scheduler
        may also change `param_groups[0]["lr"]`).
      weight_decay: lambda, decoupled (-lambda x_t in the update).
      grad_clip: clip the gradient to this global norm inside T (None: no clipping).
      scale_by_adam_betas: (b1, b2) to Adam-scale disturbances inside T (None: raw grads).
      H: number of past disturbances the controller acts on (>= 1).
      HH: rollout length used to learn M (>= 1).
      m_method: "scalar", "diagonal" or "full" M_i.
      meta_optimizer: a torch optimizer class for M (default: `torch.optim.AdamW` without
        weight decay, the config's default controller optimizer).
      meta_learning_rate: its learning rate, unless `meta_optimizer_kwargs` sets "lr".
      fake_the_dynamics: replay recorded disturbances instead of recomputing gradients.
      freeze_gpc_params: deployment: M fixed, no rollouts, only H disturbances kept, no
        cost_fn needed.
      freeze_cost_fn_during_rollouts: real rollouts recompute every disturbance with the
        current cost f_t (no cost history).
      counterfactual: if False, also add (y_HH - x_t) to the played update.
      dtype: storage dtype of the histories ("float32", "bfloat16", "float64" or a torch
        dtype); M and the arithmetic use the params' precision (at least float32).
      max_gpc_norm: project each M_i onto a ball of this radius (at init and after every
        meta step).
      meta_grad_clip: clip grad_M to this global norm before the meta step.
      initial_gpc_params: initial M: a tensor / array, a `load_controller` dict, or a path
        to a controller.npz (or its directory); shape and m_method are checked.
      initial_m0: otherwise M_0 = initial_m0 (times I).
      meta_optimizer_kwargs: keyword arguments for `meta_optimizer`.
      skip_nonfinite: skip a step whose gradient is not finite (only a counter moves) and a
        controller update whose C(M) or grad_M is not finite (the step is played with the
        current M). Costs one device-to-host read per step.
      adam_eps: Adam scaling's eps outside the square root.
      adam_eps_root: Adam scaling's eps inside the square root.
      max_full_controller_bytes: refuse a "full" controller larger than this (H n^2 4).

    References:
      Chen, Agarwal, Hazan, "Online control for meta-optimization", NeurIPS 2023.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base_learning_rate: float | Callable[[int], float] = 0.0,
        weight_decay: float = 1e-4,
        grad_clip: float | None = None,
        scale_by_adam_betas: tuple[float, float] | None = (0.9, 0.999),
        H: int = 1,
        HH: int = 16,
        m_method: str = "scalar",
        meta_optimizer: type[torch.optim.Optimizer] | None = None,
        meta_learning_rate: float = 1e-4,
        fake_the_dynamics: bool = False,
        freeze_gpc_params: bool = False,
        freeze_cost_fn_during_rollouts: bool = False,
        counterfactual: bool = True,
        dtype: str | torch.dtype = "float32",
        max_gpc_norm: float | None = None,
        meta_grad_clip: float | None = 1.0,
        initial_gpc_params: Any = None,
        initial_m0: float = -1e-2,
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        skip_nonfinite: bool = True,
        adam_eps: float = 1e-8,
        adam_eps_root: float = 1e-16,
        max_full_controller_bytes: int = DEFAULT_MAX_FULL_CONTROLLER_BYTES,
    ) -> None:
        _check_int("H", H, "controller history length")
        _check_int("HH", HH, "rollout length")
        if m_method not in ctrl.M_METHODS:
            raise ValueError(
                f"unknown m_method {m_method!r}; choose one of {', '.join(ctrl.M_METHODS)}"
            )
        for name, value in (("grad_clip", grad_clip), ("max_gpc_norm", max_gpc_norm),
                            ("meta_grad_clip", meta_grad_clip)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if scale_by_adam_betas is not None and not all(0 <= b < 1 for b in scale_by_adam_betas):
            raise ValueError(f"scale_by_adam_betas must be in [0, 1), got {scale_by_adam_betas}")
        if not callable(base_learning_rate) and not float(base_learning_rate) >= 0:
            raise ValueError(f"base_learning_rate must be >= 0, got {base_learning_rate!r}")

        params, names = _param_list(params)
        lr0 = 0.0 if callable(base_learning_rate) else float(base_learning_rate)
        super().__init__(params, {"lr": lr0})
        self._layout = FlatLayout(self.param_groups[0]["params"], names)
        layout = self._layout
        self.num_params = layout.n
        self.H, self.HH, self.m_method = int(H), int(HH), m_method
        self.weight_decay = float(weight_decay)
        self.counterfactual = bool(counterfactual)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.meta_grad_clip = meta_grad_clip
        self.max_gpc_norm = max_gpc_norm
        self.freeze_cost_fn_during_rollouts = bool(freeze_cost_fn_during_rollouts)
        self._schedule = base_learning_rate if callable(base_learning_rate) else None
        hdt = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(hdt, torch.dtype) or not hdt.is_floating_point:
            raise ValueError(
                f"dtype must be a floating dtype ({', '.join(_DTYPES)}), got {dtype!r}"
            )
        self.history_dtype = hdt
        # Arithmetic and M in the params' precision, at least float32 (bfloat16 params too).
        self.compute_dtype = torch.promote_types(layout.dtype, torch.float32)
        self.learn = not freeze_gpc_params
        zero_lr = not callable(base_learning_rate) and lr0 == 0.0
        # With eta == 0 the recomputed disturbances never enter the rollout (y_{k+1} does
        # not depend on v_s), so real and fake rollouts coincide: run the cheap one.
        self.real = self.learn and not fake_the_dynamics and not zero_lr
        self.transform = DisturbanceTransform(grad_clip, scale_by_adam_betas, adam_eps,
                                              adam_eps_root)
        replay_costs = self.real and not freeze_cost_fn_during_rollouts and HH > 1
        n, K = layout.n, (H + HH if self.learn else H)
        self.K = K
        if m_method == "full" and H * n * n * 4 > max_full_controller_bytes:
            raise ValueError(
                f"a 'full' controller for {n} parameters needs H*n*n*4 = "
                f"{H * n * n * 4 / 2**30:.2f} GiB (H={H}), above max_full_controller_bytes="
                f"{max_full_controller_bytes / 2**30:.2f} GiB; use m_method='diagonal' or "
                "'scalar', or raise max_full_controller_bytes if you have the memory"
            )

        dev, cdt, hdt = layout.device, self.compute_dtype, self.history_dtype
        M = ctrl.initial_controller(m_method, H, n, initial_m0, initial_gpc_params, cdt, dev)
        self.controller = ctrl.project_(M, max_gpc_norm)
        if meta_optimizer is None:  # MetaOptConfig's default: AdamW, no decay on M
            meta_cls, defaults = torch.optim.AdamW, {"weight_decay": 0.0}
        else:
            meta_cls, defaults = meta_optimizer, {}
        meta_kwargs = {"lr": meta_learning_rate, **defaults, **(meta_optimizer_kwargs or {})}
        self.meta_optimizer = meta_cls([self.controller], **meta_kwargs)

        like = torch.zeros(n, dtype=cdt, device=dev)
        stateful_real = self.real and self.transform.stateful
        t_state = self.transform.init(like)
        self.history = MetaOptHistory(
            step=0,
            disturbances=torch.zeros(K, n, dtype=hdt, device=dev),
            param_history=torch.zeros(HH, n, dtype=hdt, device=dev) if self.learn else None,
            grad_history=torch.zeros(HH, n, dtype=hdt, device=dev) if stateful_real else None,
            cost_fn_history=[None] * HH if replay_costs else None,
            learning_rates=[0.0] * HH,
            transform_state=t_state,
            lagged_transform_state=self.transform.init(like) if stateful_real else None,
            learning_rate=0.0,
            grad_M=torch.zeros(H, dtype=cdt, device=dev),
            gpc_cost=torch.zeros((), dtype=cdt, device=dev),
            gpc_cost_valid=0.0,
        )
        self._rollouts = Rollouts(H, HH, K, 1.0 - self.weight_decay, self._past_lr, layout, cdt)

    # ---- torch.optim.Optimizer interface ---------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only the group given at construction: the flat histories are sized for it."""
        if getattr(self, "_layout", None) is not None:
            raise ValueError(
                "MetaOpt keeps one flat history over all its parameters and cannot take a new "
                "parameter group; build a new MetaOpt over all the parameters instead"
            )
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, cost_fn: CostFunction | None = None) -> torch.Tensor | None:
        """Plays one MetaOpt step; returns the loss when it computed the gradient itself.

        Args:
          cost_fn: the loss of this step's batch as a function of the params (list or
            dict of tensors, as given to the constructor), e.g. from `make_cost_fn`. If
            the params' `.grad` are set (`loss.backward()`), they are the gradient
            (None counts as zero); otherwise the gradient of `cost_fn` is taken here.
            Needed unless `freeze_gpc_params`.
        """
        layout, hist, H, HH, K = self._layout, self.history, self.H, self.HH, self.K
        params = self.param_groups[0]["params"]
        grads, loss = self._gradient(params, cost_fn)
        cdt = self.compute_dtype
        x = layout.flatten(params).to(cdt)
        g = layout.flatten(grads).to(cdt)
        t = hist.step
        eta = self._current_lr(t)
        w, t_state = self.transform.apply(g, hist.transform_state)
        W = hist.disturbances
        Wc = W if W.dtype == cdt else W.to(cdt)

        lagged = hist.lagged_transform_state
        if lagged is not None and t >= HH:
            # T's state at t-HH+1: the lagged state advanced with the stored g_{t-HH}.
            lag_next = self.transform.apply(hist.grad_history[(t - HH) % HH].to(cdt), lagged)[1]
        else:
            lag_next = lagged
        due = self.learn and t >= H + HH
        if due:
            cost, grad_M, y_end = self._rollout(Wc, t, cost_fn, lagged, lag_next)
            grad_M_summary = ctrl.summary(grad_M)

        meta_ok = True
        if self.skip_nonfinite:
            # min and max are NaN / infinite iff some entry is: one pass instead of isfinite's
            # three, and one device-to-host read for all checks.
            checks = torch.stack(torch.aminmax(g))
            if due:  # a sum is non-finite iff an entry is (or it overflows: skip that too)
                checks = torch.cat([checks, cost.to(cdt).view(1), grad_M_summary])
            ok = torch.isfinite(checks).tolist()
            if not (ok[0] and ok[1]):
                hist.nonfinite_grad_steps += 1
                return loss
            meta_ok = all(ok[2:])

        shift = None
        if due and meta_ok:
            self._update_controller(grad_M)
            hist.grad_M = grad_M_summary.to(cdt)
            hist.gpc_cost = cost.to(cdt)
            hist.gpc_cost_valid = 1.0
            if not self.counterfactual:
                shift = y_end - x
        elif due:
            hist.nonfinite_meta_steps += 1

        # The played update, with the controller updated first.
        W[t % K].copy_(w)
        if Wc is not W:
            Wc[t % K].copy_(W[t % K])
        u = self._played_update(Wc, t, x, w, eta)
        if shift is not None:
            u.add_(shift)

        self._record(t, x, g, cost_fn, eta, t_state, lag_next)
        views = layout.views(u)
        if views[0].dtype != layout.dtype:
            views = [v.to(layout.dtype) for v in views]
        torch._foreach_add_(params, views)
        return loss

    def _gradient(self, params, cost_fn):
        """This step's gradient (the params' .grad, or that of cost_fn) and the loss if it
        was computed here."""
        grads = [p.grad for p in params]
        if any(g is not None for g in grads):
            if self.learn and cost_fn is None:
                raise ValueError(
                    "MetaOpt.step needs the loss as step(cost_fn) with cost_fn(params) -> loss "
                    "(e.g. meta_opt.torch.make_cost_fn(model, loss_fn, inputs, targets)) to "
                    "learn the controller; only freeze_gpc_params=True runs without it"
                )
            return grads, None
        if cost_fn is None:
            raise ValueError(
                "MetaOpt.step found no gradients (.grad is None for every parameter) and no "
                "cost_fn: call loss.backward() first, or pass step(cost_fn) with "
                "cost_fn(params) -> loss (e.g. meta_opt.torch.make_cost_fn(model, loss_fn, "
                "inputs, targets))"
            )
        with torch.enable_grad():
            loss = cost_fn(self._layout.container(params))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return grads, loss.detach()

    def _record(self, t, x, g, cost_fn, eta, t_state, lag_next) -> None:
        """Writes step t into the histories (after the rollout, which reads step t-HH from
        the rows step t overwrites) and advances the step count."""
        hist, HH = self.history, self.HH
        if hist.param_history is not None:
            hist.param_history[t % HH].copy_(x)
        if hist.grad_history is not None:
            hist.grad_history[t % HH].copy_(g)
            hist.lagged_transform_state = lag_next
        if hist.cost_fn_history is not None:
            hist.cost_fn_history[t % HH] = cost_fn
        hist.transform_state = t_state
        hist.learning_rates[t % HH] = eta
        hist.learning_rate = eta
        hist.step = t + 1

    def _rollout(self, Wc, t, cost_fn, lagged, lag_next):
        """C(M), grad_M C(M) and y_HH at step t (fake or real rollout)."""
        hist, HH = self.history, self.HH
        x0 = hist.param_history[(t - HH) % HH].to(self.compute_dtype)  # x_{t-HH}
        M = self.controller
        if not self.real:
            return self._rollouts.fake(M, Wc, x0, t, cost_fn)
        if self.freeze_cost_fn_during_rollouts:
            # Every disturbance, the first included, is recomputed with f_t from T's state
            # at t-HH.
            return self._rollouts.real(M, Wc, x0, t, cost_fn, lambda s: cost_fn,
                                       self.transform, lagged, recorded_first=False)
        return self._rollouts.real(M, Wc, x0, t, cost_fn,
                                   lambda s: hist.cost_fn_history[s % HH],
                                   self.transform, lag_next, recorded_first=True)

    def _update_controller(self, grad_M: torch.Tensor) -> None:
        """One step of the controller's optimizer on grad_M (clipped), then the projection."""
        if self.meta_grad_clip is not None:  # optax.clip_by_global_norm, in place
            norm = torch.linalg.vector_norm(grad_M)
            grad_M = grad_M.mul_(torch.clamp(self.meta_grad_clip / norm, max=1.0))
        M = self.controller
        M.grad = grad_M.to(M.dtype)
        self.meta_optimizer.step()
        M.grad = None
        ctrl.project_(M, self.max_gpc_norm)

    def _played_update(self, Wc, t, x, w, eta) -> torch.Tensor:
        """-lambda x_t - eta_t w_t + sum_i M_i * w_{t-i} (w_t already in the ring)."""
        u = ctrl.control(self.controller, Wc, t)
        if self.weight_decay:
            u.add_(x, alpha=-self.weight_decay)
        if eta:
            u.add_(w, alpha=-eta)
        return u

    def _current_lr(self, t: int) -> float:
        """eta_t: the schedule at t, or the group's "lr" (which LR schedulers may change)."""
        group = self.param_groups[0]
        if self._schedule is not None:
            group["lr"] = float(self._schedule(t))
        return float(group["lr"])

    def _past_lr(self, s: int) -> float:
        """eta_s of a step s in t-HH..t-1, as it was played."""
        return self.history.learning_rates[s % self.HH]

    # ---- state, episodes, controller files, metrics ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """All attributes (torch's optimizers pickle only defaults, state and groups), so
        `copy.deepcopy` and pickling keep the histories and the controller."""
        return dict(self.__dict__)

    def state_dict(self) -> dict[str, Any]:
        """Everything `load_state_dict` needs to continue exactly: the histories (tensors
        by reference, as torch optimizers do: `copy.deepcopy` or `torch.save` it to keep a
        snapshot), M, the controller optimizer's state and the parameter group."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.param_groups[0]["params"])))
        return {
            "history": self.history.to_dict(),
            "controller": self.controller,
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "param_groups": [group],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores a `state_dict()` of a MetaOpt with the same options on the same model
        (copying it: later steps do not write into `state_dict`)."""
        M = state_dict["controller"]
        if tuple(M.shape) != tuple(self.controller.shape):
            raise ValueError(
                f"MetaOpt.load_state_dict: the saved controller has shape {tuple(M.shape)} but "
                f"this optimizer's has {tuple(self.controller.shape)}; use the same H, "
                "m_method and model"
            )
        self.history.load_dict_(state_dict["history"])
        self.controller.copy_(M)
        self.meta_optimizer.load_state_dict(state_dict["meta_optimizer"])
        for key, value in state_dict["param_groups"][0].items():
            if key != "params":
                self.param_groups[0][key] = value

    def reset_for_new_episode(self, params: Iterable[Any] | None = None) -> None:
        """Empties the histories for a new episode, keeping M and its optimizer state.

        Args:
          params: the new episode's parameters, if they are new tensors (same shapes as
            before); by default the same tensors, re-initialised in place.
        """
        if params is not None:
            new, _ = _param_list(params)
            shapes = [p.shape for p in new]
            if shapes != self._layout.shapes:
                raise ValueError(
                    "reset_for_new_episode: the new params have shapes "
                    f"{[tuple(s) for s in shapes]} but MetaOpt was built for "
                    f"{[tuple(s) for s in self._layout.shapes]}; an episode must "
                    "re-initialise the same model"
                )
            self.param_groups[0]["params"] = new
        self.history.reset_()

    def save_controller(self, path: str | os.PathLike) -> str:
        """Writes M to controller.npz (in `path` if a directory), the JAX side's format."""
        return save_controller(path, self)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by each history and in total (M and its optimizer included)."""
        meta = [v for s in self.meta_optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor)]
        controller = sum(t.numel() * t.element_size() for t in [self.controller, *meta])
        return self.history.memory_bytes(controller)

    def logging_metrics(self) -> dict[str, float]:
        """Numbers to log, with the JAX side's keys: M_i, grad_M_i, gpc_cost(_valid), bytes
        per history, and the non-finite counters.

        `M_i` is the effective coefficient on w_{t-i} in the played update, so M_0
        includes -eta_t; diagonal / full controllers report the mean over coordinates /
        of the diagonal. One device-to-host read for all of them.
        """
        hist = self.history
        effective = ctrl.summary(self.controller).clone()
        effective[0] -= hist.learning_rate
        values = torch.cat([effective, hist.grad_M, hist.gpc_cost.view(1)]).tolist()
        out = {f"M_{i}": values[i] for i in range(self.H)}
        out.update({f"grad_M_{i}": values[self.H + i] for i in range(self.H)})
        out["gpc_cost"] = values[-1]
        out["gpc_cost_valid"] = hist.gpc_cost_valid
        out.update({k: float(v) for k, v in self.memory_bytes().items()})
        out["nonfinite_grad_steps"] = float(hist.nonfinite_grad_steps)
        out["nonfinite_meta_steps"] = float(hist.nonfinite_meta_steps)
        return out


def _check_int(name: str, value: Any, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} ({meaning}) must be an integer >= 1, got {value!r}")


def _param_list(params: Any) -> tuple[list[torch.Tensor], list[str] | None]:
    """The parameter tensors and, for a dict or named parameters, their names."""
    if isinstance(params, torch.Tensor):
        raise TypeError("MetaOpt takes an iterable of tensors (model.parameters()), "
                        "got a single tensor; wrap it in a list")
    if isinstance(params, dict):
        return list(params.values()), list(params)
    params = list(params)
    if params and isinstance(params[0], dict):
        raise ValueError(
            "MetaOpt takes one set of parameters with one set of options (its histories are "
            f"one flat vector), got {len(params)} parameter groups; pass model.parameters()"
        )
    if params and isinstance(params[0], tuple):
        return [p for _, p in params], [name for name, _ in params]
    return params, None
