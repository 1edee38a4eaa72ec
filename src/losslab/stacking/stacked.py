"""M members of one architecture trained as one stacked model (torch.func), with per-member optimizers.

Every stacked tensor has a leading member dim: ``params[name][m]`` is member m's tensor. Each member keeps
its own initialisation (built separately), its own batches (``x[m]``), its own hyperparameters ((M,) tensors)
and its own early stopping (the optimizer's ``active`` mask: a member that is not active keeps its parameters
and optimizer state exactly as they are).

Update rules, per member (g its gradient, t its step count after this step, all hyperparameters its own):

SGD, as torch.optim.SGD (μ momentum, τ dampening, wd weight_decay)::

    d = g + wd·p
    b = d                                     at t = 1
    b = μ·b + (1 − τ)·d                       after
    d = d + μ·b  (nesterov)  |  b  (μ ≠ 0)  |  d  (μ = 0)
    p ← p − lr·d

Adam, as torch.optim.Adam; with ``decoupled=True`` as torch.optim.AdamW::

    p ← p·(1 − lr·wd)  (decoupled)   |   g = g + wd·p  (otherwise)
    m = m + (1 − β1)·(g − m)
    v = β2·v + (1 − β2)·g²
    p ← p − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

losslab's L2 (trainer.l2 = λ, added to the gradients by losslab.stacking.steppers): g = g + 2λ·w on weight tensors
(ndim ≥ 2 per member), not biases.

Hyperparameters and everything derived from them (1 − β1, lr / (1 − β1^t), ...) are computed in float64 and cast
to the parameters' dtype where they meet a tensor, as torch.optim does with its Python floats.

Training step, with autograd (members are independent, so the gradient of the summed losses w.r.t. member m's
slice is the gradient of member m's own loss)::

    params, buffers, base = stack_models([build(seed) for seed in seeds])
    optimizer = StackedSGD(params, lr=lrs, momentum=momenta, weight_decay=decays)
    logits = stacked_forward(base, params, buffers, x)                 # x: (M, N, ...), logits: (M, N, K)
    per_member_loss(logits, y).sum().backward()                         # per_member_loss: (M,)
    optimizer.step({k: p.grad for k, p in params.items()})
    for p in params.values():
        p.grad = None
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from losslab.stacking.batched_layers import GROUPS, as_members, batched_forward, layer_plan


# ---------------------------------------------------------------- the stacked model
def stack_models(models: Sequence[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor], nn.Module]:
    """Stack separately built members (same class and shapes, each its own initialisation).

    Returns ``(params, buffers, base)``: the stacked parameters as new leaf tensors (requires_grad), the
    stacked buffers, and a structure-only copy of the first member on the meta device for :func:`stacked_forward`
    (with its ``layer_plan``: the traced layers when they can run batched, else None).
    The base's train/eval mode is the mode every member runs in.
    """
    params, buffers = stack_module_state(list(models))
    base = copy.deepcopy(models[0]).to("meta")
    base.layer_plan = layer_plan(base)
    return params, buffers, base


def stacked_forward(base: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                    shared_input: bool = False) -> Tensor:
    """Outputs of all members, (M, N, ...): member m sees ``x[m // (M/G)]`` (x: (G, N, ...), G dividing M; G = M
    is a batch each), or with ``shared_input`` every member sees the same ``x`` (N, ...), e.g. a validation batch.

    Dropout draws different masks per member. In train mode, BatchNorm updates each member's own running
    statistics in the stacked ``buffers``. A model of linear, convolutional, pooling, dropout and activation
    layers runs as batched layers (losslab.stacking.batched_layers); any other through vmap.
    """
    if base.layer_plan is not None:
        return batched_forward(base, base.layer_plan, params, x, shared_input)

    def member_forward(member_params, member_buffers, member_x):
        return functional_call(base, (member_params, member_buffers), (member_x,))

    members = next(iter(params.values())).shape[0]
    if not shared_input and len(x) < members:
        x = as_members(x, GROUPS, members)
    in_dims = (0, 0, None if shared_input else 0)
    return torch.vmap(member_forward, in_dims=in_dims, randomness="different")(params, buffers, x)


def member_state(params: dict[str, Tensor], buffers: dict[str, Tensor], member: int) -> dict[str, Tensor]:
    """Member ``member``'s state dict (copies), loadable into a model built like it, e.g. for best.pt."""
    return {name: stacked[member].detach().clone() for name, stacked in {**params, **buffers}.items()}


# ---------------------------------------------------------------- per-member hyperparameters
def hyperparameter_dtype(device: torch.device) -> torch.dtype:
    """float64 like torch.optim's Python floats; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def per_member(value: float | Sequence[float] | Tensor, members: int, device: torch.device) -> Tensor:
    """A hyperparameter as an (M,) tensor: one number for every member, or one number per member.

    Give Python numbers or float64 tensors: a float32 tensor has already rounded 0.1 to 0.10000000149."""
    values = torch.as_tensor(value, dtype=hyperparameter_dtype(device), device=device)
    if values.ndim == 0:
        return values.expand(members).clone()
    if values.shape != (members,):
        raise ValueError(f"a per-member hyperparameter needs one value or {members} values (one per member), "
                         f"got shape {tuple(values.shape)}.")
    return values.clone()


def member_view(values: Tensor, like: Tensor) -> Tensor:
    """(M,) per-member values as (M, 1, ..., 1), to broadcast over the stacked tensor ``like``; numbers are cast
    to ``like``'s dtype, masks stay bool."""
    if values.is_floating_point():
        values = values.to(like.dtype)
    return values.view(-1, *[1] * (like.ndim - 1))


# ---------------------------------------------------------------- optimizers
class StackedOptimizer:
    """What the stacked optimizers share: per-member hyperparameters, per-parameter state, the active mask,
    checkpoints. A subclass gives ``init_state(p)`` and ``update(p, g, state, out) -> (p, state)``, which changes
    nothing it is given but writes the new parameters into ``out`` when that is not None.

    ``hparams[name]`` is an (M,) tensor that may be changed between steps (an lr schedule).
    ``active`` is an (M,) bool tensor, all true at the start; ``set_active(m, False)`` freezes member m.
    """

    def __init__(self, params: dict[str, Tensor], **hparams: float | Sequence[float] | Tensor):
        self.params = params
        first = next(iter(params.values()))
        self.members, device = first.shape[0], first.device
        self.hparams = {name: per_member(value, self.members, device) for name, value in hparams.items()}
        self.active = torch.ones(self.members, dtype=torch.bool, device=device)
        self.state: dict[str, dict[str, Tensor]] = {}
        self.read_flags()

    def read_flags(self) -> None:
        """What a step decides on, read once onto the host so that a step reads nothing from the device: whether
        every member is active, and whether any has weight decay (no schedule changes it)."""
        self.all_active = bool(self.active.all())
        self.decays = bool((self.hparams["weight_decay"] != 0).any())

    def set_active(self, member: int, active: bool) -> None:
        self.active[member] = active
        self.read_flags()

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def update(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
               out: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def zero_steps(self) -> Tensor:
        """An (M,) int64 zero step count, the start of every parameter's state."""
        return torch.zeros(self.members, dtype=torch.int64, device=self.active.device)

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor | None]) -> None:
        """One step of the active members, given stacked gradients by parameter name (a missing or None
        gradient skips that parameter, as torch.optim skips ``grad is None``)."""
        for name, param in self.params.items():
            grad = grads.get(name)
            if grad is None:
                continue
            state = self.state.get(name) or self.init_state(param)
            # every member steps: the new parameters go straight into the stack's (one pass less over them)
            new_param, new_state = self.update(param, grad, state, out=param if self.all_active else None)
            if not self.all_active:  # a frozen member keeps its parameters and state exactly
                new_param = torch.where(member_view(self.active, param), new_param, param)
                new_state = {key: torch.where(member_view(self.active, value), value, state[key])
                             for key, value in new_state.items()}
                param.copy_(new_param)
            self.state[name] = new_state

    def state_dict(self) -> dict:
        """Copies of the hyperparameters, the active mask and the state; plain tensors (torch.load weights_only)."""
        return {"hparams": {name: value.clone() for name, value in self.hparams.items()},
                "active": self.active.clone(),
                "state": {name: {key: value.clone() for key, value in state.items()}
                          for name, state in self.state.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["hparams"].keys() != self.hparams.keys():
            raise ValueError(f"this state dict holds the hyperparameters {sorted(state_dict['hparams'])}, "
                             f"not those of {type(self).__name__} ({sorted(self.hparams)}).")
        device = self.active.device
        self.hparams = {name: value.to(device).clone() for name, value in state_dict["hparams"].items()}
        self.active = state_dict["active"].to(device).clone()
        self.state = {name: {key: value.to(device).clone() for key, value in state.items()}
                      for name, state in state_dict["state"].items()}
        self.read_flags()


class StackedSGD(StackedOptimizer):
    """torch.optim.SGD per member (see the module docstring); every number may differ between members."""

    def __init__(self, params: dict[str, Tensor], lr, momentum=0.0, weight_decay=0.0, nesterov: bool = False,
                 dampening=0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening)
        if nesterov and ((self.hparams["momentum"] <= 0) | (self.hparams["dampening"] != 0)).any():
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0 for every member, "
                             "as in torch.optim.SGD.")
        self.nesterov = nesterov

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        state = {"step": self.zero_steps()}
        if (self.hparams["momentum"] != 0).any():  # like torch, no buffer when no member uses momentum
            state["momentum_buffer"] = torch.zeros_like(param)
        return state

    def update(self, param, grad, state, out=None):
        h = self.hparams
        direction = grad + member_view(h["weight_decay"], param) * param if self.decays else grad
        new_state = {"step": state["step"] + 1}
        if "momentum_buffer" in state:
            momentum, undamped = member_view(h["momentum"], param), member_view(1 - h["dampening"], param)
            buffer = torch.where(member_view(state["step"] == 0, param), direction,
                                 momentum * state["momentum_buffer"] + undamped * direction)
            if self.nesterov:
                direction = direction + momentum * buffer
            else:
                direction = torch.where(momentum != 0, buffer, direction)
            new_state["momentum_buffer"] = buffer
        return torch.addcmul(param, member_view(h["lr"], param), direction, value=-1, out=out), new_state


class StackedAdam(StackedOptimizer):
    """torch.optim.Adam per member, or torch.optim.AdamW with ``decoupled=True`` (see the module docstring).

    ``betas`` is a pair (β1, β2), each one number or one per member; each member counts its own steps."""

    def __init__(self, params: dict[str, Tensor], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled: bool = False):
        beta1, beta2 = betas
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
        self.decoupled = decoupled

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        return {"step": self.zero_steps(), "exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}

    def update(self, param, grad, state, out=None):
        h = self.hparams
        lr, beta1, beta2 = h["lr"], h["beta1"], h["beta2"]
        if self.decoupled:
            param = param * member_view(1 - lr * h["weight_decay"], param)
        else:
            grad = grad + member_view(h["weight_decay"], param) * param
        step = state["step"] + 1
        exp_avg = torch.lerp(state["exp_avg"], grad, member_view(1 - beta1, param))
        exp_avg_sq = member_view(beta2, param) * state["exp_avg_sq"] + member_view(1 - beta2, param) * grad * grad
        step_size = member_view(lr / (1 - beta1**step), param)
        denom = exp_avg_sq.sqrt() / member_view((1 - beta2**step).sqrt(), param) + member_view(h["eps"], param)
        new_param = torch.sub(param, step_size * exp_avg / denom, out=out)
        return new_param, {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
