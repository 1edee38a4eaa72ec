"""The stacked model and the stacked optimizers against independent per-member runs of torch.optim.

Three members with different initialisations, batches and hyperparameters; after every step each member's
parameters must equal those of its own model trained alone by torch.optim.SGD / Adam / AdamW.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.models import FNN, LeNet, Linear
from losslab.stacking.stacked import (
    StackedAdam,
    StackedSGD,
    member_state,
    stack_models,
    stacked_forward,
)
from losslab.stacking.steppers import FlatLayout, l2_rates

M, IN_SHAPE, CLASSES, BATCH, STEPS = 3, (1, 16, 16), 4, 8, 5
BUILDERS = {
    "linear": lambda: Linear(IN_SHAPE, CLASSES),
    "fnn": lambda: FNN(IN_SHAPE, CLASSES, hidden=(32, 16)),
    "lenet": lambda: LeNet(IN_SHAPE, CLASSES),
}
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
L2 = (0.0, 0.01, 0.1)

SGD_CASES = {  # hyperparameters per member
    "momentum": dict(lr=(0.1, 0.05, 0.2), momentum=(0.0, 0.9, 0.5), weight_decay=(0.0, 1e-2, 1e-3)),
    "nesterov": dict(lr=(0.1, 0.05, 0.2), momentum=(0.3, 0.9, 0.5), weight_decay=(1e-3, 0.0, 1e-2), nesterov=True),
    "dampening": dict(lr=(0.1, 0.05, 0.2), momentum=(0.0, 0.9, 0.5), weight_decay=(1e-3, 0.0, 1e-2),
                      dampening=(0.5, 0.1, 0.0)),
}
ADAM = dict(lr=(1e-3, 1e-2, 3e-3), beta1=(0.9, 0.8, 0.5), beta2=(0.999, 0.99, 0.9), eps=(1e-8, 1e-6, 1e-4),
            weight_decay=(0.0, 0.1, 0.01))


def build_members(model: str, dtype=torch.float64, seeds=(0, 1, 2)) -> list[nn.Module]:
    """One model per seed, each built alone (its own initialisation)."""
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(BUILDERS[model]().to(dtype))
    return members


def batches(dtype=torch.float64, steps=STEPS, seed=123):
    """`steps` batches (x (M, N, C, H, W), y (M, N)): every member its own data."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(M, BATCH, *IN_SHAPE, generator=gen, dtype=dtype),
             torch.randint(0, CLASSES, (M, BATCH), generator=gen)) for _ in range(steps)]


def stacked_grads(base, params, buffers, x, y) -> dict[str, torch.Tensor]:
    """Gradients of the sum of the members' mean cross-entropies: member m's slice is its own gradient."""
    logits = stacked_forward(base, params, buffers, x)
    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(M, -1).mean(1)
    return dict(zip(params, torch.autograd.grad(losses.sum(), list(params.values()))))


def torch_backward(model, x, y) -> None:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


def torch_step(model, optimizer, l2=0.0) -> None:
    """L2 and optimizer step of the plain loop of losslab.training.loop on one member (after torch_backward)."""
    for w in model.parameters():
        if w.ndim >= 2:
            w.grad.add_(w, alpha=2 * l2)
    optimizer.step()


def assert_members_match(params, references, atol) -> None:
    for m, reference in enumerate(references):
        for name, value in reference.named_parameters():
            error = (params[name][m] - value).abs().max().item()
            assert error <= atol, f"member {m} {name}: max |stacked - torch.optim| = {error:.3g} > {atol}"


def torch_sgd(parameters, m, lr, momentum, weight_decay, nesterov=False, dampening=(0.0,) * M):
    return torch.optim.SGD(parameters, lr=lr[m], momentum=momentum[m], weight_decay=weight_decay[m],
                           nesterov=nesterov, dampening=dampening[m])


def torch_adam(parameters, m, decoupled, lr, beta1, beta2, eps, weight_decay):
    optimizer = torch.optim.AdamW if decoupled else torch.optim.Adam
    return optimizer(parameters, lr=lr[m], betas=(beta1[m], beta2[m]), eps=eps[m], weight_decay=weight_decay[m])


def stacked_adam(params, decoupled, lr, beta1, beta2, eps, weight_decay):
    """Hyperparameters as float64 (M,) tensors (the SGD tests give tuples of floats)."""
    beta1, beta2 = torch.tensor(beta1, dtype=torch.float64), torch.tensor(beta2, dtype=torch.float64)
    return StackedAdam(params, lr=torch.tensor(lr, dtype=torch.float64), betas=(beta1, beta2),
                       eps=torch.tensor(eps, dtype=torch.float64),
                       weight_decay=torch.tensor(weight_decay, dtype=torch.float64), decoupled=decoupled)


def with_l2(grads: dict, params: dict, l2) -> dict:
    """The gradients with trainer.l2's 2λ·w added, as losslab.stacking.steppers.StackedStepper adds it."""
    layout = FlatLayout(params)
    flat = layout.flatten(params).detach()
    return layout.views(layout.add_l2(layout.flatten(grads).detach(), flat, l2_rates(l2, flat)))


def train_against_torch(model, dtype, make_stacked, make_torch, l2=(0.0,) * M) -> None:
    """STEPS steps of the stacked optimizer and of torch.optim per member, compared after each step.

    In float64 the stacked optimizer gets the stacked model's gradients (vmap), so the whole stacked step is
    tested. In float32 it gets each member's own autograd gradients: vmap's gradients differ from them by float32
    rounding, and Adam's first step lr·g/(|g| + ε) turns a gradient difference δ into lr·δ/ε where |g| ≲ ε
    (4e-6 on LeNet), a property of float32 gradients, not of the optimizer.
    """
    members = build_members(model, dtype)
    references = [copy.deepcopy(member) for member in members]
    params, buffers, base = stack_models(members)
    optimizer = make_stacked(params)
    torch_optimizers = [make_torch(reference.parameters(), m) for m, reference in enumerate(references)]
    assert_members_match(params, references, atol=0)
    for x, y in batches(dtype):
        for m in range(M):
            torch_backward(references[m], x[m], y[m])
        if dtype == torch.float64:
            grads = stacked_grads(base, params, buffers, x, y)
        else:
            grads = {name: torch.stack([reference.get_parameter(name).grad for reference in references])
                     for name in params}
        optimizer.step(with_l2(grads, params, l2))
        for m in range(M):
            torch_step(references[m], torch_optimizers[m], l2[m])
        assert_members_match(params, references, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("model", BUILDERS)
@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_matches_torch_sgd_per_member(case, model, dtype):
    hparams = SGD_CASES[case]
    train_against_torch(model, dtype, lambda params: StackedSGD(params, **hparams),
                        lambda parameters, m: torch_sgd(parameters, m, **hparams), l2=L2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("model", BUILDERS)
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_adam_matches_torch_adam_and_adamw_per_member(decoupled, model, dtype):
    train_against_torch(model, dtype, lambda params: stacked_adam(params, decoupled, **ADAM),
                        lambda parameters, m: torch_adam(parameters, m, decoupled, **ADAM))


@pytest.mark.parametrize("model", BUILDERS)
def test_stacked_forward_equals_each_member(model):
    members = build_members(model)
    params, buffers, base = stack_models(members)
    x = batches(steps=1)[0][0]
    per_member = stacked_forward(base, params, buffers, x)
    shared = stacked_forward(base, params, buffers, x[0], shared_input=True)
    assert per_member.shape == shared.shape == (M, BATCH, CLASSES)
    for m, member in enumerate(members):
        torch.testing.assert_close(per_member[m], member(x[m]), rtol=0, atol=1e-12)
        torch.testing.assert_close(shared[m], member(x[0]), rtol=0, atol=1e-12)
    assert not torch.allclose(per_member[0], per_member[1])  # own initialisations


@pytest.mark.parametrize("model", [*BUILDERS, "batch_norm"])
def test_members_in_groups_see_their_groups_batch_with_their_own_gradients(model):
    """x (G, N, ...) for M = 4 members in G = 2 groups (the batches of two seeds, two members each): member m's
    outputs and gradients are its own model's on x[m // 2], batched or (BatchNorm) through vmap."""
    seeds = range(4)
    if model == "batch_norm":
        members = []
        for seed in seeds:
            torch.manual_seed(seed)
            members.append(batch_norm_net().train())
    else:
        members = build_members(model, seeds=seeds)
    references = [copy.deepcopy(member) for member in members]
    params, buffers, base = stack_models(members)
    assert (base.layer_plan is None) == (model == "batch_norm")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, BATCH, *IN_SHAPE, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (2, BATCH), generator=gen)
    logits = stacked_forward(base, params, buffers, x)
    assert logits.shape == (4, BATCH, CLASSES)
    losses = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(2, 0).flatten(), reduction="none")
    grads = dict(zip(params, torch.autograd.grad(losses.view(4, -1).mean(1).sum(), list(params.values()))))
    for m, reference in enumerate(references):
        torch.testing.assert_close(logits[m], reference(x[m // 2]), rtol=0, atol=1e-12)
        torch_backward(reference, x[m // 2], y[m // 2])
        for name, value in reference.named_parameters():
            torch.testing.assert_close(grads[name][m], value.grad, rtol=0, atol=1e-12)


def test_stacked_gradients_equal_each_members_own_in_float32():
    members = build_members("lenet", torch.float32)
    params, buffers, base = stack_models(members)
    x, y = batches(torch.float32, steps=1)[0]
    grads = stacked_grads(base, params, buffers, x, y)
    for m, member in enumerate(members):
        torch_backward(member, x[m], y[m])
        for name, p in member.named_parameters():
            torch.testing.assert_close(grads[name][m], p.grad, rtol=1e-5, atol=1e-7)


def batch_norm_net() -> nn.Module:
    """The BatchNorm pattern of VGG5, small: conv -> BatchNorm2d -> ReLU, Linear -> BatchNorm1d."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 14 * 14, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES)).double()


def test_batch_norm_keeps_each_members_running_statistics():
    """In train mode each member normalises with its own batch statistics and updates its own running
    statistics in the stacked buffers; eval mode then uses them."""
    members = []
    for seed in range(M):
        torch.manual_seed(seed)
        members.append(batch_norm_net())
    params, buffers, base = stack_models(members)
    for x, _ in batches(steps=2):
        out = stacked_forward(base, params, buffers, x)
        for m, member in enumerate(members):
            torch.testing.assert_close(out[m], member(x[m]), rtol=0, atol=1e-12)
    for m, member in enumerate(members):
        for name, value in member.named_buffers():
            torch.testing.assert_close(buffers[name][m], value, rtol=0, atol=1e-12)
    assert buffers["1.num_batches_tracked"].tolist() == [2] * M
    base.eval()
    x = batches(steps=1, seed=7)[0][0]
    out = stacked_forward(base, params, buffers, x)
    for m, member in enumerate(members):
        torch.testing.assert_close(out[m], member.eval()(x[m]), rtol=0, atol=1e-12)


def test_dropout_draws_different_masks_per_member():
    members = build_members("fnn", seeds=(0, 0, 0))  # identical members
    for member in members:
        member.net[2] = nn.Dropout(0.5)  # in place of the first activation
    params, buffers, base = stack_models(members)
    x = batches(steps=1)[0][0][0]
    train = stacked_forward(base, params, buffers, x, shared_input=True)
    assert not torch.equal(train[0], train[1])
    base.eval()
    evaluation = stacked_forward(base, params, buffers, x, shared_input=True)
    assert torch.equal(evaluation[0], evaluation[1])
    torch.testing.assert_close(evaluation[0], members[0].eval()(x), rtol=0, atol=1e-12)


def test_member_state_loads_into_a_model_built_alone():
    members = build_members("lenet")
    params, buffers, base = stack_models(members)
    optimizer = StackedSGD(params, lr=0.1)
    x, y = batches(steps=1)[0]
    optimizer.step(stacked_grads(base, params, buffers, x, y))
    trained = stacked_forward(base, params, buffers, x)
    model = build_members("lenet", seeds=(9,))[0]
    model.load_state_dict(member_state(params, buffers, 2))
    torch.testing.assert_close(model(x[2]), trained[2], rtol=0, atol=1e-12)


def test_l2_acts_on_weights_only():
    params, _, _ = stack_models(build_members("fnn"))
    zeros = {name: torch.zeros_like(p) for name, p in params.items()}
    added = with_l2(zeros, params, L2)
    for name, p in params.items():
        if name.endswith("weight"):
            assert torch.equal(added[name], 2 * torch.tensor(L2, dtype=p.dtype).view(M, 1, 1) * p.detach())
        else:
            assert torch.equal(added[name], zeros[name])
    assert any(name.endswith("bias") for name in params) and L2[1] > 0


def test_a_flat_layout_holds_every_parameter_once_and_gives_them_back():
    params, _, _ = stack_models(build_members("lenet"))
    layout = FlatLayout(params)
    flat = layout.flatten(params)
    assert flat.shape == (M, sum(p[0].numel() for p in params.values())) and flat.is_leaf and flat.requires_grad
    views = layout.views(flat)
    assert views.keys() == params.keys()
    for name, p in params.items():
        assert torch.equal(views[name], p)
    views["classifier.0.weight"].detach()[1].fill_(7.0)  # views share the flat storage
    assert (flat[1] == 7.0).sum() == params["classifier.0.weight"][1].numel()


@pytest.mark.parametrize("model", [*BUILDERS, "batch_norm"])
def test_models_of_plain_layers_run_batched_and_others_through_vmap(model):
    members = [batch_norm_net() for _ in range(M)] if model == "batch_norm" else build_members(model)
    _, _, base = stack_models(members)
    assert (base.layer_plan is None) == (model == "batch_norm")


OPTIMIZERS = {
    "sgd": lambda params: StackedSGD(params, **SGD_CASES["momentum"]),
    "adam": lambda params: stacked_adam(params, False, **ADAM),
}
TORCH_OPTIMIZERS = {
    "sgd": lambda parameters, m: torch_sgd(parameters, m, **SGD_CASES["momentum"]),
    "adam": lambda parameters, m: torch_adam(parameters, m, False, **ADAM),
}


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_inactive_member_is_frozen_exactly_and_resumes_its_own_count(kind):
    """Member 1 stops after 2 steps (its gradients turn NaN, like a diverged run), then comes back at step 5:
    frozen meanwhile, and afterwards equal to a torch optimizer that simply skipped steps 3 and 4."""
    members = build_members("linear")
    references = [copy.deepcopy(member) for member in members]
    params, buffers, base = stack_models(members)
    optimizer = OPTIMIZERS[kind](params)
    torch_optimizers = [TORCH_OPTIMIZERS[kind](reference.parameters(), m) for m, reference in enumerate(references)]
    for step, (x, y) in enumerate(batches()):
        frozen = step in (2, 3)
        optimizer.set_active(1, not frozen)
        grads = stacked_grads(base, params, buffers, x, y)
        if frozen:
            for grad in grads.values():
                grad[1] = float("nan")
            before = ({name: p[1].clone() for name, p in params.items()},
                      {name: {key: value[1].clone() for key, value in state.items()}
                       for name, state in optimizer.state.items()})
        optimizer.step(grads)
        for m in range(M):
            if not (frozen and m == 1):
                torch_backward(references[m], x[m], y[m])
                torch_step(references[m], torch_optimizers[m])
        if frozen:
            assert all(torch.equal(p[1], before[0][name]) for name, p in params.items())
            assert all(torch.equal(value[1], before[1][name][key])
                       for name, state in optimizer.state.items() for key, value in state.items())
        assert_members_match(params, references, TOLERANCE[torch.float64])
    assert optimizer.state["fc.weight"]["step"].tolist() == [5, 3, 5]


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(kind):
    data = batches()
    params, buffers, base = stack_models(build_members("fnn"))
    optimizer = OPTIMIZERS[kind](params)
    for x, y in data[:2]:
        optimizer.step(stacked_grads(base, params, buffers, x, y))
    optimizer.set_active(2, False)
    saved = io.BytesIO()
    torch.save({"params": {name: p.detach() for name, p in params.items()}, "optimizer": optimizer.state_dict()},
               saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    resumed_params = {name: p.clone().requires_grad_() for name, p in checkpoint["params"].items()}
    resumed = (StackedSGD(resumed_params, lr=0.5) if kind == "sgd"
               else StackedAdam(resumed_params, lr=0.5, betas=(0.1, 0.2)))  # overwritten by the checkpoint
    resumed.load_state_dict(checkpoint["optimizer"])
    for x, y in data[2:]:
        optimizer.step(stacked_grads(base, params, buffers, x, y))
        resumed.step(stacked_grads(base, resumed_params, buffers, x, y))
        assert all(torch.equal(params[name], resumed_params[name]) for name in params)
    assert not torch.equal(params["net.1.weight"][0], checkpoint["params"]["net.1.weight"][0])  # it did train
    assert torch.equal(params["net.1.weight"][2], checkpoint["params"]["net.1.weight"][2])  # still frozen


def test_adamw_decays_decoupled_and_adam_through_the_gradient():
    """Same members, data and hyperparameters: the member without weight decay ends equal, the others differ."""
    data = batches()
    results = {}
    for decoupled in (False, True):
        params, buffers, base = stack_models(build_members("linear"))
        optimizer = StackedAdam(params, lr=1e-2, weight_decay=(0.0, 0.1, 1.0), decoupled=decoupled)
        for x, y in data:
            optimizer.step(stacked_grads(base, params, buffers, x, y))
        results[decoupled] = params["fc.weight"].detach()
    adam, adamw = results[False], results[True]
    assert torch.equal(adam[0], adamw[0])
    assert not torch.allclose(adam[1], adamw[1]) and not torch.allclose(adam[2], adamw[2])


def test_hyperparameters_are_checked():
    params, _, _ = stack_models(build_members("linear"))
    with pytest.raises(ValueError, match="one value or 3 values"):
        StackedSGD(params, lr=(0.1, 0.2))
    with pytest.raises(ValueError, match="nesterov"):
        StackedSGD(params, lr=0.1, momentum=(0.9, 0.0, 0.9), nesterov=True)
    with pytest.raises(ValueError, match="hyperparameters"):
        StackedSGD(params, lr=0.1).load_state_dict(StackedAdam(params).state_dict())


class PartFlatten(nn.Module):
    """Flattens only some dims: not a layer the batched path knows, so the stack keeps vmap."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.fc(x.flatten(1, 2).mean(1))


def test_a_partial_flatten_runs_through_vmap_and_equals_each_member():
    members = [PartFlatten().double() for _ in range(M)]
    params, buffers, base = stack_models(members)
    assert base.layer_plan is None
    x = batches(steps=1)[0][0]
    out = stacked_forward(base, params, buffers, x)
    for m, member in enumerate(members):
        torch.testing.assert_close(out[m], member(x[m]), rtol=0, atol=1e-12)
