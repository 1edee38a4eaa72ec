"""One training step for a group of runs, as the loop calls it: `step(x, y, shared, epoch, clean_y)` returns the
(M, 2 + L) per-run values of that step (loss, hits, then the loss's own logged values; with the true labels
`clean_y` of a noisy dataset, their hits as one more column) and leaves the weights updated.

- `SingleStepper`: one run, its torch optimizer, `torch.compile` when trainer.compile is on.
- `StackedStepper`: M runs whose configs differ only in `STACKABLE_KEYS`, trained as one stacked model: every
  member's parameters are one (M, P) matrix (`FlatLayout`) and each member's model keeps *views* into it, so
  checkpoints use the ordinary per-run code; one forward of the stack (batched layers, else vmap:
  `losslab.stacking.stacked.stacked_forward`) and the members' losses as one (`stacked_loss`), their sum backward
  (member
  m's gradient is its own loss's), then L2, clipping and the optimizer update (`losslab.stacking.stacked`) on the one
  matrix with per-member numbers. The members' evaluations are one pass of the stack. A member that stops is
  frozen. Its `last.pt` holds its optimizer state in torch.optim's format, so a stopped member resumes alone or
  in a stack alike.

What a separate run does and a stacked one does not: per-member dropout masks come from the shared global RNG,
so a member with dropout is not bit-for-bit its separate run (it is the same model and recipe). Runs a stack
cannot express raise `NotStackable` (the launcher runs them one by one and logs why).
"""

from __future__ import annotations

import copy
import itertools
import json
import math

import torch
from omegaconf import DictConfig, OmegaConf

from losslab.evaluation.evaluate import Evaluation, evaluate, evaluate_logits, split_logits
from losslab.evaluation.precision import autocast
from losslab.losses import scale_step
from losslab.stacking.stacked import StackedAdam, StackedOptimizer, StackedSGD, stack_models, stacked_forward

# numbers a stack holds per member; jobs whose configs agree on everything else train together
STACKABLE_KEYS = (
    "seed", "optimizer.lr", "optimizer.momentum", "optimizer.dampening", "optimizer.weight_decay", "optimizer.betas",
    "optimizer.eps", "trainer.l2", "trainer.grad_clip", "trainer.patience", "trainer.divergence_threshold",
    "loss.beta1", "loss.beta2", "loss.base1", "loss.base2", "loss.label_smoothing", "loss.gamma", "loss.q",
    "loss.alpha", "loss.beta", "loss.log_zero",
)


class NotStackable(Exception):
    """These jobs cannot train as one stack; the message says why."""


def group_key(cfg: DictConfig) -> str:
    """The resolved config without `STACKABLE_KEYS` (and the run's name), as a string to group jobs by."""
    values = OmegaConf.to_container(cfg, resolve=True)
    values.pop("name", None)
    for key in STACKABLE_KEYS:
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(values, sort_keys=True, default=str)


class SingleStepper:
    def __init__(self, run):
        settings = run.job.cfg.trainer
        self.model, self.loss_fn, self.optimizer = run.model, run.loss_fn, run.optimizer
        self.forward = torch.compile(run.model) if settings.compile else run.model
        self.weights = [w for w in run.model.parameters() if w.ndim >= 2]  # L2 acts on weight matrices, not biases
        self.l2, self.grad_clip, self.precision = settings.l2, settings.grad_clip, settings.precision

    def step(self, x, y, shared: bool, epoch: int, clean_y=None) -> torch.Tensor:
        with autocast(x.device, self.precision):
            logits = self.forward(x)
        logits = logits.float()
        loss = self.loss_fn(logits, y)
        logged = self.loss_fn.logged().values()  # the values this step's loss used
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.l2:  # d/dw of l2 * sum(w^2)
            for w in self.weights:
                w.grad.add_(w.detach(), alpha=2 * self.l2)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        if self.loss_fn.scales_steps:
            self.scaled_step(x, logits.detach(), epoch)
        else:
            self.optimizer.step()
        predicted = self.loss_fn.predict(logits.detach())
        clean_hits = [] if clean_y is None else [(predicted == clean_y).sum().float()]
        return torch.stack([loss.detach(), (predicted == y).sum().float(), *logged, *clean_hits])[None]

    @torch.no_grad()
    def scaled_step(self, x, logits_before, epoch: int) -> None:
        """The optimizer's step, then scaled by the loss's factor: θ ← θ0 + (θ − θ0)·scale."""
        params = list(self.model.parameters())
        before = [q.detach().clone() for q in params]
        self.optimizer.step()
        scale_step(params, before, self.loss_fn.step_scale(logits_before, self.model(x).float(), epoch))

    def evaluate(self, x, y, settings, members: list[int]) -> dict[int, Evaluation]:
        return {0: evaluate(self.model, self.loss_fn, x, y, settings)}

    def freeze(self, member: int) -> None:
        """Nothing to do: a single run that stops is not stepped again."""

    def sync_lrs(self) -> None:
        """Nothing to do: the scheduler sets the optimizer's lr itself."""

    def optimizer_state(self, member: int) -> dict:
        return self.optimizer.state_dict()


class StackedStepper:
    def __init__(self, runs):
        settings = [run.job.cfg.trainer for run in runs]
        self.runs, self.precision = runs, settings[0].precision
        params, self.buffers, self.base = stack_models([run.model for run in runs])
        self.layout = FlatLayout(params)
        self.flat = self.layout.flatten(params)  # every member's parameters as one (M, P) leaf: one update
        share_storage(runs, self.layout.views(self.flat.detach()), self.buffers)
        self.loss_fn = stacked_loss(runs)
        self.optimizer = stacked_optimizer(runs, {FLAT: self.flat})
        self.optimizer.state = stacked_state(runs, self.layout, self.optimizer)  # a resume's, else empty
        self.l2_rates = l2_rates([s.l2 for s in settings], self.flat) if any(s.l2 for s in settings) else None
        self.grad_clip = torch.tensor([s.grad_clip or math.inf for s in settings], device=self.flat.device)
        self.clipping = any(s.grad_clip for s in settings)  # decided once: no host read per step
        self.loss_values = logged_values(runs, self.flat.device)

    def forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Every member's outputs (M, N, K) for x: (N, ...) the members share, else (G, N, ...), member m's batch
        at [m // (M/G)] (G = M: one each)."""
        return stacked_forward(self.base, self.layout.views(self.flat), self.buffers, x, shared_input=shared)

    def step(self, x, y, shared: bool, epoch: int, clean_y=None) -> torch.Tensor:
        with autocast(x.device, self.precision):
            logits = self.forward(x, shared)
        logits = logits.float()
        losses = self.loss_fn(logits, y)  # (M,)
        losses.sum().backward()
        grad, self.flat.grad = self.flat.grad, None
        if self.l2_rates is not None:  # d/dw of λ·Σw² on weight matrices
            self.layout.add_l2(grad, self.flat.detach(), self.l2_rates)
        if self.clipping:
            grad = clip_per_member(grad, self.grad_clip)
        self.optimizer.step({FLAT: grad})
        predicted = self.loss_fn.predict(logits.detach())  # (M, N)
        columns = [losses.detach()[:, None], (predicted == y).sum(-1).float()[:, None], self.loss_values]
        if clean_y is not None:
            columns.append((predicted == clean_y).sum(-1).float()[:, None])
        return torch.cat(columns, 1)

    def evaluate(self, x, y, settings, members: list[int]) -> dict[int, Evaluation]:
        """The split `x, y` evaluated for each of `members`: when there are several, every member's logits from one
        pass of the stack and its metrics from one computation over the members, each with its own loss."""
        if len(members) == 1:
            run = self.runs[members[0]]
            return {members[0]: evaluate(run.model, run.loss_fn, x, y, settings)}
        evaluations = evaluate_logits(self.loss_fn, *split_logits(StackedModel(self), x, y, settings), settings)
        return {k: evaluations[k] for k in members}

    def freeze(self, member: int) -> None:
        self.optimizer.set_active(member, False)

    def sync_lrs(self) -> None:
        """Copy the lr each member's scheduler has set on its own torch optimizer into the stack."""
        lr = self.optimizer.hparams["lr"]
        self.optimizer.hparams["lr"] = torch.tensor([run.optimizer.param_groups[0]["lr"] for run in self.runs],
                                                    dtype=lr.dtype, device=lr.device)

    def optimizer_state(self, member: int) -> dict:
        return torch_optimizer_state(self.runs[member].optimizer, self.optimizer.state.get(FLAT), self.layout,
                                     member)


class StackedModel:
    """The stack as a model of the evaluation (losslab.evaluation.evaluate.split_logits): x (N, ...) -> (M, N, K), every
    member on the same x, in the mode of the stack's base (train or eval)."""

    def __init__(self, stepper: StackedStepper):
        self.stepper, self.base = stepper, stepper.base

    @property
    def training(self) -> bool:
        return self.base.training

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def eval(self) -> None:
        self.base.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.stepper.forward(x, shared=True)  # split_logits runs it without autograd


FLAT = "parameters"  # the stacked optimizer's one parameter: every member's parameters side by side


class FlatLayout:
    """Where each stacked parameter (M, *shape) lies in the (M, P) matrix of every member's parameters."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.names = list(params)
        self.shapes = [tuple(q.shape[1:]) for q in params.values()]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        ends = list(itertools.accumulate(self.sizes))
        self.weight_columns = [(end - size, end) for end, size, shape in zip(ends, self.sizes, self.shapes)
                               if len(shape) >= 2]  # weight matrices (ndim >= 2), what trainer.l2 acts on

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        members = next(iter(params.values())).shape[0]
        return torch.cat([q.detach().reshape(members, -1) for q in params.values()], 1).requires_grad_()

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> (M, *shape) view of `flat` (or of an (M, P) state of the same layout)."""
        parts = flat.split(self.sizes, dim=1)
        return {name: part.unflatten(1, shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    def add_l2(self, grad: torch.Tensor, flat: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """λ·Σw²'s gradient added to `grad` (M, P) in place and returned: rates (M, 1) = 2λ_m (trainer.l2 of
        member m) times `flat` at the weight matrices' columns, nothing at the biases. Column ranges with a
        rate per member, not an (M, P) matrix of rates: that was one more pass over the stack's memory."""
        for start, end in self.weight_columns:
            grad[:, start:end].addcmul_(rates, flat[:, start:end])
        return grad


def l2_rates(l2: list[float], like: torch.Tensor) -> torch.Tensor:
    """(M, 1) 2λ_m, computed in float64 and cast to the dtype of `like` (FlatLayout.add_l2)."""
    return (2 * torch.tensor(l2, dtype=torch.float64)).to(like)[:, None]


def stacked_loss(runs):
    """Member 0's loss holding every member's buffers (its hyperparameters) stacked to (M, ...): a loss computes
    over leading member dims (losslab.losses.Loss), so this one gives the (M,) members' losses of (M, N, K)
    logits."""
    loss_fn = copy.deepcopy(runs[0].loss_fn)
    _, buffers = torch.func.stack_module_state([run.loss_fn for run in runs])
    for name, stacked in buffers.items():
        put_buffer(loss_fn, name, stacked)
    return loss_fn


def logged_values(runs, device: torch.device) -> torch.Tensor:
    """(M, L): each member's loss values to log, constant over training (a stack's losses learn nothing)."""
    if not runs[0].loss_fn.logged():
        return torch.zeros(len(runs), 0, device=device)
    return torch.stack([torch.stack(list(run.loss_fn.logged().values())).detach() for run in runs])


def check_stackable(first, device: torch.device, conv_on_cpu: bool = False) -> None:
    """Raise NotStackable with the reason when runs like `first` (their configs differ only in
    STACKABLE_KEYS) cannot train as one stack, or would train slower as one. On the CPU a stack of convolutional
    members is slower than their separate steps (scripts/bench_stacked_step.py, LeNet-5, 16 members): past the
    first layer their convolutions are one grouped convolution, slower than separate ones, and the stack's
    activations, 16 times larger, make the elementwise and pooling passes several times slower per element
    (scripts/profile_layers.py shows each layer)."""
    if device.type == "cpu" and not conv_on_cpu and any(isinstance(m, torch.nn.Conv2d) for m in first.model.modules()):
        raise NotStackable("stacked convolutions run no faster than separate ones on the CPU "
                           "(hydra.launcher.conv_on_cpu=true stacks them anyway)")
    if any(q.requires_grad for q in first.loss_fn.parameters()):
        raise NotStackable("the loss has learnable parameters (loss.coeffs or loss.bases = learnable)")
    if first.loss_fn.scales_steps:
        raise NotStackable("the loss rescales every step from the batch (loss=entropy_gradient)")
    if first.job.cfg.trainer.compile:
        raise NotStackable("trainer.compile is on")
    kind = type(first.optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise NotStackable(f"there is no stacked {kind.__name__}")
    group = first.optimizer.param_groups[0]
    if group.get("maximize") or group.get("amsgrad"):
        raise NotStackable("optimizer.maximize and optimizer.amsgrad have no stacked version")


@torch.no_grad()
def share_storage(runs, params: dict, buffers: dict) -> None:
    """Point every member's parameters and buffers at its slice of the stack (views: no copies to keep in sync).
    Each parameter stays the same object (its torch optimizer and checkpoints hold it) and is set to the view."""
    for k, run in enumerate(runs):
        for name, q in run.model.named_parameters():
            q.set_(params[name][k])
        for name, _ in run.model.named_buffers():
            put_buffer(run.model, name, buffers[name][k])


def put_buffer(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Make `tensor` the buffer `name` (dotted, as named_buffers names it) of `module`; assigning a registered
    buffer's name replaces it and keeps whether it is saved in the state dict."""
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, tensor)


def stacked_optimizer(runs, params: dict) -> StackedOptimizer:
    """The members' torch optimizers (one class, their own numbers) as one stacked optimizer."""
    groups = [run.optimizer.param_groups[0] for run in runs]

    def each(key):
        return [g[key] for g in groups]

    if isinstance(runs[0].optimizer, torch.optim.SGD):
        return StackedSGD(params, lr=each("lr"), momentum=each("momentum"), weight_decay=each("weight_decay"),
                          dampening=each("dampening"), nesterov=groups[0]["nesterov"])
    return StackedAdam(params, lr=each("lr"), betas=([b[0] for b in each("betas")], [b[1] for b in each("betas")]),
                       eps=each("eps"), weight_decay=each("weight_decay"),
                       decoupled=isinstance(runs[0].optimizer, torch.optim.AdamW))


def clip_per_member(grad: torch.Tensor, max_norm: torch.Tensor) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ per member of the (M, P) gradient: scale row m by min(1, c_m / (‖g_m‖ + 1e-6))."""
    norms = grad.float().square().sum(1).sqrt()
    return grad * (max_norm / (norms + 1e-6)).clamp(max=1.0).to(grad.dtype)[:, None]


def torch_optimizer_state(optimizer: torch.optim.Optimizer, state: dict | None, layout: FlatLayout, k: int) -> dict:
    """Member k's optimizer state in its torch optimizer's own format (what a separate run's last.pt holds), from
    the stacked optimizer's `state` of the flat parameters (None before its first step)."""
    group = optimizer.param_groups[0]
    if state is None:
        return optimizer.state_dict()
    tensors = {key: layout.views(value[k:k + 1]) for key, value in state.items() if key != "step"}
    for name, param in zip(layout.names, group["params"]):
        if isinstance(optimizer, torch.optim.SGD):
            if group["momentum"] != 0 and "momentum_buffer" in tensors:
                optimizer.state[param] = {"momentum_buffer": tensors["momentum_buffer"][name][0].clone()}
        else:
            optimizer.state[param] = {"step": torch.tensor(float(state["step"][k])),
                                      "exp_avg": tensors["exp_avg"][name][0].clone(),
                                      "exp_avg_sq": tensors["exp_avg_sq"][name][0].clone()}
    return optimizer.state_dict()


def stacked_state(runs, layout: FlatLayout, stacked: StackedOptimizer) -> dict:
    """The members' torch optimizer states (as a resume loaded them) as the stacked optimizer's state of the flat
    parameters: the inverse of torch_optimizer_state. Only `step == 0` matters for SGD (a momentum buffer starts
    at the first gradient), so a member with a buffer counts as stepped."""
    member_states = [[run.optimizer.state.get(param) for param in run.optimizer.param_groups[0]["params"]]
                     for run in runs]
    if not any(any(states) for states in member_states):
        return {}
    state = stacked.init_state(stacked.params[FLAT])
    views = {key: layout.views(value) for key, value in state.items() if key != "step"}
    for k, states in enumerate(member_states):
        if not any(states):
            continue
        state["step"][k] = int(next(s for s in states if s).get("step", 1))
        for name, member in zip(layout.names, states):
            for key, view in views.items():
                if member and member.get(key) is not None:
                    view[name][k] = member[key]
    return {FLAT: state}
