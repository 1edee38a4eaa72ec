"""The forward pass of M stacked members as batched layers: what `torch.vmap` over `functional_call` computes,
with each layer written as the one large product a CPU or GPU computes at speed.

A model qualifies when `torch.fx` can trace it into calls of the layers below and `flatten`; otherwise (BatchNorm,
custom modules, other tensor methods) the stack keeps vmap (`losslab.stacking.stacked.stacked_forward` decides).

Member m has weights W[m], biases b[m]. A value flows through the layers in one of four layouts:

- ``shared``: (N, ...), the same input for every member (an input batch they share);
- ``groups``: (G, N, ...), G < M inputs, member m's at [m // (M/G)] (consecutive members of one seed share a
  data order, so a batch);
- ``members``: (M, N, ...), member m's values at [m] (any strides);
- ``channels``: (N, M·C, H, W), member m's C feature maps at channels [m·C, (m+1)·C) (what a convolution gives).

Linear: shared h (N, I): one product [W[0]; ...; W[M−1]] · hᵀ, (M·O, N) — every member's outputs stacked;
groups h (G, N, I): that product for each group's members and batch, as one batched product (`baddbmm`);
members h (M, N, I): z[m]ᵀ = W[m] · h[m]ᵀ + b[m] as one batched product, (M, O, N). All keep the outputs
transposed in memory: the backward then multiplies in BLAS's preferred layout, and a loss over the last layer's
outputs reduces over its classes across the rows (losslab.losses.base.log_softmax). Conv2d: shared input, one
convolution with M·O output channels; groups input, one grouped convolution (groups = G) over the G batches'
channels side by side (on the CPU G ordinary convolutions: `batch_by_batch`); channels input, one grouped convolution
(groups = M).
Activations, dropout and max-pooling act elementwise or per channel, so in any layout (dropout draws each
member's own mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity)
SHARED, GROUPS, MEMBERS, CHANNELS = "shared", "groups", "members", "channels"


def layer_plan(base: nn.Module) -> list | None:
    """The traced nodes of `base`'s forward when every one is a layer this module batches, else None."""
    try:
        graph = torch.fx.symbolic_trace(base).graph
    except Exception:  # untraceable control flow: vmap handles it
        return None
    nodes = list(graph.nodes)
    return nodes if all(batchable(node, base) for node in nodes) else None


def batchable(node, base: nn.Module) -> bool:
    if node.op in ("placeholder", "output"):
        return True
    if node.op == "call_method":  # x.flatten(1): every dim after the batch's into one
        return node.target == "flatten" and flatten_start(node) == 1 and len(node.args) <= 2 \
            and "end_dim" not in node.kwargs
    if node.op != "call_module":
        return False
    module = base.get_submodule(node.target)
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    if isinstance(module, nn.MaxPool2d):
        return not module.return_indices
    return isinstance(module, (nn.Linear, nn.Dropout, *ELEMENTWISE))


def flatten_start(node) -> int:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)


def batched_forward(base: nn.Module, plan: list, params: dict[str, Tensor], x: Tensor, shared_input: bool) -> Tensor:
    """The (M, N, ...) outputs of every member for input `x`: (N, ...) shared by all, else (G, N, ...) where
    member m sees x[m // (M/G)] (G = M: one each)."""
    members, values = next(iter(params.values())).shape[0], {}
    for node in plan:
        if node.op == "placeholder":
            values[node] = (x, SHARED if shared_input else MEMBERS if len(x) == members else GROUPS)
        elif node.op == "output":
            return as_members(*values[node.args[0]], members)
        elif node.op == "call_method":
            values[node] = flatten(*values[node.args[0]], members)
        else:
            module = base.get_submodule(node.target)
            values[node] = apply_layer(module, node.target, params, *values[node.args[0]], members)
    raise ValueError("the traced model has no output")


def apply_layer(module: nn.Module, name: str, params: dict, tensor: Tensor, layout: str, members: int):
    if isinstance(module, nn.Linear):
        return linear(tensor, layout, params[f"{name}.weight"], params.get(f"{name}.bias"), members)
    if isinstance(module, nn.Conv2d):
        return conv2d(module, tensor, layout, params[f"{name}.weight"], params.get(f"{name}.bias"), members)
    if isinstance(module, nn.Flatten):
        return flatten(tensor, layout, members)
    if isinstance(module, nn.MaxPool2d) and layout in (GROUPS, MEMBERS):
        return module(tensor.flatten(0, 1)).unflatten(0, (len(tensor), -1)), layout
    if isinstance(module, nn.Dropout) and layout in (SHARED, GROUPS) and module.training:
        tensor, layout = as_members(tensor, layout, members), MEMBERS  # each member its own mask
    return module(tensor), layout


def linear(h: Tensor, layout: str, weight: Tensor, bias: Tensor | None, members: int) -> tuple[Tensor, str]:
    if layout == SHARED:
        flat_weight = weight.reshape(-1, weight.shape[-1])  # (M·O, I)
        out = flat_weight @ h.t() if bias is None else torch.addmm(bias.reshape(-1, 1), flat_weight, h.t())
        return out.view(members, -1, h.shape[0]).transpose(1, 2), MEMBERS
    if layout == GROUPS:  # (G, S·O, I) weights by (G, I, N) inputs
        group_weight = weight.reshape(len(h), -1, weight.shape[-1])
        out = torch.bmm(group_weight, h.transpose(1, 2)) if bias is None else torch.baddbmm(
            bias.reshape(len(h), -1, 1), group_weight, h.transpose(1, 2))
        return out.view(members, -1, h.shape[1]).transpose(1, 2), MEMBERS
    h = as_members(h, layout, members)
    out = torch.bmm(weight, h.transpose(1, 2)) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight,
                                                                                   h.transpose(1, 2))
    return out.transpose(1, 2), MEMBERS


def conv2d(module: nn.Conv2d, h: Tensor, layout: str, weight: Tensor, bias: Tensor | None, members: int):
    groups = {SHARED: 1, GROUPS: len(h), MEMBERS: members, CHANNELS: members}[layout]
    if layout in (GROUPS, MEMBERS):
        if h.device.type == "cpu":
            return batch_by_batch(module, h, weight, bias), CHANNELS
        h = h.transpose(0, 1).flatten(1, 2)  # (G, N, C, H, W) -> (N, G·C, H, W), a copy
    out = F.conv2d(h, weight.flatten(0, 1), None if bias is None else bias.flatten(), module.stride,
                   module.padding, module.dilation, groups=groups)
    return out, CHANNELS


def batch_by_batch(module: nn.Conv2d, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """(G, N, C, H, W) -> (N, M·O, H, W): each batch convolved with its M/G members' filters as one ordinary
    convolution, the G outputs side by side in the channels. On the CPU a grouped convolution over the batches
    computes its weight gradient many times slower than G ordinary ones (scripts/profile_layers.py)."""
    weights = weight.flatten(0, 1).chunk(len(h))  # batch g's members' filters, (M/G·O, C, kH, kW)
    biases = [None] * len(h) if bias is None else bias.flatten().chunk(len(h))
    return torch.cat([F.conv2d(batch, batch_weight, batch_bias, module.stride, module.padding, module.dilation)
                      for batch, batch_weight, batch_bias in zip(h, weights, biases)], dim=1)


def flatten(tensor: Tensor, layout: str, members: int) -> tuple[Tensor, str]:
    """flatten(1) of every member's value: its features into one dim."""
    if layout == SHARED:
        return tensor.flatten(1), SHARED
    if layout == GROUPS:
        return tensor.flatten(2), GROUPS
    return as_members(tensor, layout, members).flatten(2), MEMBERS


def as_members(tensor: Tensor, layout: str, members: int) -> Tensor:
    """A value in the (M, N, ...) layout (a view where possible)."""
    if layout == MEMBERS:
        return tensor
    if layout == SHARED:
        return tensor.expand(members, *tensor.shape)
    if layout == GROUPS:  # a copy
        return tensor.repeat_interleave(members // len(tensor), dim=0)
    return tensor.unflatten(1, (members, -1)).transpose(0, 1)
