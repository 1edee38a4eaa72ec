"""Where a training step's time goes, layer by layer: a stack of M members (shared batches, and every member its
own) against the same M runs stepped one after another, each layer's forward and backward set against its FLOP
floor at the measured matmul peak.

    python scripts/profile_layers.py [--models lenet vgg5] [--members 16] [--steps N] [--full]

First the matmul peak: the median GFLOP/s of a few (2048 x 2048) by (2048 x 2048) fp32 products. Then, for each
model, three cases built as scripts/bench_stacked_step.py builds them (MNIST shapes, batch 128, SGD, a 4 lr x 4
trainer.l2 grid of members): `shared` (one `StackedStepper.step`, the members share their batch), `own` (one
stacked step, every member its own batch) and `separate` (M `SingleStepper.step`s, one per member, their own
batches: what the basic launcher runs; a row of it is the sum over the M steps). The cases are warmed up, timed
in turns without the profiler (`step (unprofiled)`: the median of --steps rounds of one step of each, so that a
change in the machine's load touches every case alike; the stacked/separate ratios come from these), then each is
profiled with torch.profiler (CPU activity) over --steps steps, each row the median over those steps (so the
profiled step is the sum of the rows' medians and the shares sum to 100 %). `--ops N` lists each case's N ops of
most time with their rows and input shapes.

Every op's own time (its self CPU time) goes to one row:

- `<layer> fwd`: ops inside that layer's forward (its module's call, or the stack's batched layer of it);
- `<layer> bwd`: the autograd nodes its forward ops created (matched by their sequence numbers);
- `layout copies`: copies (copy_, clone, contiguous, cat, repeat_interleave) inside a layer or between layers,
  forward or backward: what changing the stack's layouts costs;
- `param views`: the stack's (M, P) parameter matrix split into each layer's views, and in backward the layers'
  gradients gathered back into one (M, P) gradient;
- `loss fwd`, `loss bwd`; `accumulate grads` (the gradients stored on the leaves); `L2` (trainer.l2's term added
  to the gradients); `optimizer` (zero_grad and the SGD update); `other` (the rest: hits, logged values);
- `untraced`: wall time between the ops (Python), the profiled steps' wall time less the ops' times.

Convolutions and linear layers also show their FLOP (every member's, per step: conv forward 2·N·Cout·Hout·Wout·
Cin·k², linear 2·N·in·out; backward twice that, the input's gradient and the weight's, once for a layer whose input
needs no gradient), their floor (those FLOP at the matmul peak) and `xfloor`, the measured time over the floor.
With more than 16 layers (VGG-5), the layers other than convolutions and linear layers are summed by kind (all
ReLUs as `relu`, ...). The member count defaults to --members (16) for LeNet-5 and to 4 for VGG-5 (16 with --full:
one separate VGG-5 step takes seconds here); --steps to 8 for LeNet-5 and 1 for VGG-5 (30 and 3 with --full).
A stack of VGG-5 (BatchNorm) runs through vmap, LeNet-5's as batched layers (losslab.stacking.batched_layers).
"""

from __future__ import annotations

import argparse
import bisect
import copy
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from bench_common import parse_sized, warn_if_busy  # beside this script
from bench_loop import matmul_peak_flops
from bench_stacked_step import batch, build_runs
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from losslab.stacking import batched_layers
from losslab.stacking.steppers import SingleStepper, StackedStepper

SCOPE = "layer::"  # record_function names this script gives
BACKWARD = "autograd::engine::evaluate_function: "
COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::repeat_interleave"}
KINDS = {nn.Conv2d: "conv", nn.Linear: "fc", nn.MaxPool2d: "pool", nn.ReLU: "relu", nn.Tanh: "tanh",
         nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn", nn.Dropout: "dropout",
         nn.Flatten: "flatten", nn.Identity: "identity"}
STEP_ROWS = ["layout copies", "param views", "loss fwd", "loss bwd", "accumulate grads", "L2", "optimizer", "other",
             "untraced"]
CASES = ("shared", "own", "separate")
DEFAULT_MEMBERS = {"vgg5": (4, 16)}  # quick, --full
DEFAULT_STEPS = {"vgg5": (1, 3)}  # and the default for the other models: (8, 30)
WARM_UP = {"vgg5": 1}  # steps of each case before timing; the other models 3
STEP = "profiled step"  # the scope of each profiled step


# ---------------------------------------------------------------- the model's layers and their FLOP
@dataclass
class Layer:
    name: str  # conv1, relu2, fc3, ...
    row: str  # the table's row: the name, or the kind where layers are summed by kind
    fwd_flop: float = 0.0  # one member, one step
    bwd_flop: float = 0.0


def layers_of(model: nn.Module, in_shape: tuple[int, ...], batch_size: int = 128) -> dict[str, Layer]:
    """Module path -> Layer for every leaf module of `model`, in forward order, with the FLOP of its convolutions
    and linear layers at `batch_size`, counted from the shapes a forward on the meta device gives."""
    leaves = [(path, m) for path, m in model.named_modules() if path and not list(m.children())]
    counts: dict[str, int] = defaultdict(int)
    layers = {}
    for path, module in leaves:
        kind = KINDS.get(type(module), type(module).__name__.lower())
        counts[kind] += 1
        layers[path] = Layer(f"{kind}{counts[kind]}", f"{kind}{counts[kind]}")
    if len(layers) > 16:
        for layer in layers.values():
            if not layer.name.startswith(("conv", "fc")):
                layer.row = layer.name.rstrip("0123456789")
    meta = copy.deepcopy(model).to("meta")
    paths = {id(m): path for path, m in meta.named_modules()}

    def count(module, inputs, output):
        layer, x = layers[paths[id(module)]], inputs[0]
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flop = 2 * output.numel() * x.shape[1] // module.groups * k
        elif isinstance(module, nn.Linear):
            flop = 2 * output.numel() * x.shape[-1]
        else:
            return
        layer.fwd_flop = flop
        layer.bwd_flop = flop * (2 if x.requires_grad else 1)  # the weight's gradient; the input's when needed

    handles = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
    meta(torch.zeros(batch_size, *in_shape, device="meta"))
    for handle in handles:
        handle.remove()
    return layers


# ---------------------------------------------------------------- labelling the step's ops
def scoped(function, label: str):
    """`function` run inside a record_function scope named `label`."""
    def wrapped(*args, **kwargs):
        with record_function(SCOPE + label):
            return function(*args, **kwargs)
    return wrapped


def label_modules(model: nn.Module, labels: dict[str, str]) -> list:
    """Hooks that run each leaf module of `model` inside its layer's scope; returns their handles."""
    handles = []
    for path, module in model.named_modules():
        if path in labels:
            scopes = []

            def enter(module, inputs, label=labels[path], scopes=scopes):
                scopes.append(record_function(SCOPE + label))
                scopes[-1].__enter__()

            def leave(module, inputs, output, scopes=scopes):
                scopes.pop().__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


@contextmanager
def labelled(stepper, labels: dict[str, str]):
    """Scopes for the layers, the loss, the optimizer and (stacked) the L2 term and the parameter views of
    `stepper` while inside; for the stack's batched layers, which call no modules, around batched_layers'
    apply_layer."""
    handles = []
    saved = {"apply_layer": batched_layers.apply_layer}
    try:
        if isinstance(stepper, StackedStepper):
            handles += label_modules(stepper.base, labels)
            layout = stepper.layout
            layout.views, layout.add_l2 = scoped(layout.views, "param views"), scoped(layout.add_l2, "L2")
            stepper.forward = scoped(stepper.forward, "model")

            def apply_layer(module, name, *args):
                with record_function(SCOPE + labels[name]):
                    return saved["apply_layer"](module, name, *args)

            batched_layers.apply_layer = apply_layer
        else:
            handles += label_modules(stepper.model, labels)
            stepper.forward = scoped(stepper.forward, "model")
        optimizer = stepper.optimizer
        optimizer.step = scoped(optimizer.step, "optimizer")
        if hasattr(optimizer, "zero_grad"):
            optimizer.zero_grad = scoped(optimizer.zero_grad, "optimizer")
        handles += [stepper.loss_fn.register_forward_pre_hook(lambda m, i: scope_enter(m, "loss")),
                    stepper.loss_fn.register_forward_hook(lambda m, i, o: scope_exit(m))]
        yield
    finally:
        batched_layers.apply_layer = saved["apply_layer"]
        for handle in handles:
            handle.remove()
        for owner, names in ((stepper, ("forward",)), (stepper.optimizer, ("step", "zero_grad")),
                             (getattr(stepper, "layout", None), ("views", "add_l2"))):
            for name in names:
                if owner is not None and name in vars(owner):
                    delattr(owner, name)
        if isinstance(stepper, SingleStepper):
            stepper.forward = stepper.model


def scope_enter(module, label: str) -> None:
    module._profile_scope = record_function(SCOPE + label)
    module._profile_scope.__enter__()


def scope_exit(module) -> None:
    module._profile_scope.__exit__(None, None, None)
    del module._profile_scope


# ---------------------------------------------------------------- attributing the profile
def ancestors(event):
    while event is not None:
        yield event
        event = event.cpu_parent


def innermost(event):
    """(the innermost scope or backward node around `event`, whether a copy op lies on the way)."""
    copying = False
    for outer in ancestors(event):
        copying = copying or outer.name in COPIES
        if outer.name.startswith((SCOPE, BACKWARD)):
            return outer, copying
    return None, copying


def backward_labels(events):
    """A function: an autograd node's sequence number -> the scope label of the forward op that created it. The
    last forward op to carry the number decides (ops carry the next node's number until one creates it); a node
    made where the profiler records no number (inside vmap's batching rules) takes the label of the nearest lower
    number recorded (None for numbers below the first)."""
    latest: dict[int, tuple[float, str]] = {}
    for event in events:
        if event.sequence_nr < 0 or event.name.startswith(SCOPE):
            continue
        scope, _ = innermost(event)
        if scope is None or scope.name.startswith(BACKWARD):
            continue
        start = event.time_range.start
        if event.sequence_nr not in latest or start >= latest[event.sequence_nr][0]:
            latest[event.sequence_nr] = (start, scope.name[len(SCOPE):])
    numbers = sorted(latest)

    def label(number: int) -> str | None:
        if number < 0:
            return None
        index = bisect.bisect_right(numbers, number) - 1
        return latest[numbers[index]][1] if index >= 0 else None

    return label


def attribute(events, rows_of: dict[str, str], ops: dict | None = None) -> list[dict[str, float]]:
    """Per profiled step (a `STEP` scope), each event's self CPU time (µs) summed by row (see the module's
    docstring); the steps' scopes' own time, between their ops, is `untraced`. `rows_of` maps a layer's label to
    its row's name. With `ops`, also sums the time into ops[(row, op's name, its input shapes)]."""
    events = sorted(events, key=lambda e: e.time_range.start)
    labels = backward_labels(events)
    steps = [e for e in events if e.name == STEP]
    starts = [step.time_range.start for step in steps]
    per_step: list[dict[str, float]] = [defaultdict(float) for _ in steps]
    after_backward = False  # the separate steps' L2 term: what runs between backward and the optimizer's step
    for event in events:
        index = bisect.bisect_right(starts, event.time_range.start) - 1
        if index < 0 or event.time_range.start >= steps[index].time_range.end:
            continue  # outside the profiled steps
        if event.name == STEP:
            row = "untraced"
        else:
            row, after_backward = row_of(event, labels, rows_of, after_backward)
        per_step[index][row] += event.self_cpu_time_total
        if ops is not None:
            ops[row, event.name, shapes(event)] += event.self_cpu_time_total
    return per_step


def shapes(event) -> str:
    """The input shapes of `event` (recorded with record_shapes), the empty ones left out."""
    return " ".join("x".join(map(str, shape)) for shape in event.input_shapes if shape)


def row_of(event, labels, rows_of: dict[str, str], after_backward: bool) -> tuple[str, bool]:
    """The row of `event`'s own time, and whether the step is now past its backward and before its optimizer."""
    scope, copying = innermost(event)
    if scope is None:
        return ("L2" if after_backward else "other"), after_backward
    if scope.name.startswith(BACKWARD):
        label, direction = labels(scope.sequence_nr), "bwd"
        if label is None:
            return ("accumulate grads" if "AccumulateGrad" in scope.name else "other"), True
        after_backward = True
    else:
        label, direction = scope.name[len(SCOPE):], "fwd"
        after_backward = after_backward and label != "optimizer"
    if label in rows_of:
        return ("layout copies" if copying else f"{rows_of[label]} {direction}"), after_backward
    if label == "model":  # the stack's own steps between its layers
        return ("layout copies" if copying else "other"), after_backward
    if label == "loss":
        return f"loss {direction}", after_backward
    return label, after_backward  # param views, L2, optimizer


# ---------------------------------------------------------------- measuring
@dataclass
class Case:
    name: str
    step: object  # one step of the case
    steppers: list
    timings: list[float] = field(default_factory=list)  # ms, unprofiled
    rows: dict[str, float] = field(default_factory=dict)  # ms per step, the median over the profiled steps
    ops: dict = field(default_factory=lambda: defaultdict(float))  # (row, op, shapes) -> µs over the steps

    @property
    def step_ms(self) -> float:
        return statistics.median(self.timings)

    @property
    def profiled_ms(self) -> float:
        return sum(self.rows.values())


def build_case(model: str, case: str, members: int, tmp: Path) -> tuple[Case, dict[str, Layer]]:
    """The case with one step as a function and the steppers to label, and the model's layers by module path."""
    own_batches = case != "shared"
    device = torch.device("cpu")
    runs, data = build_runs(model, members, own_batches, device, tmp / f"{model}-{case}")
    x, y = batch(data, members, own_batches, device)
    layers = layers_of(runs[0].model, tuple(x.shape[-3:]))
    if case == "separate":
        singles = [SingleStepper(run) for run in runs]
        return Case(case, lambda: [single.step(x[m], y[m], True, 0) for m, single in enumerate(singles)],
                    singles), layers
    stepper = StackedStepper(runs)
    return Case(case, lambda: stepper.step(x, y, not own_batches, 0), [stepper]), layers


def measure(model: str, names: list[str], members: int, steps: int, tmp: Path, warm_up: int = 3,
            shapes: bool = False) -> tuple[list[Case], dict]:
    """The cases of `model`: warmed up, timed in turns (`steps` rounds of one step of each, so that a change of
    the machine's load touches them alike), then each profiled over `steps` steps (with `shapes`, recording the
    ops' input shapes for `top_ops`)."""
    cases, layers = [], {}
    for name in names:
        case, layers = build_case(model, name, members, tmp)
        cases.append(case)
    for case in cases:
        for _ in range(warm_up):
            case.step()
    for _ in range(steps):
        for case in cases:
            started = time.perf_counter()
            case.step()
            case.timings.append((time.perf_counter() - started) * 1e3)
    labels = {path: layer.name for path, layer in layers.items()}
    rows_of = {layer.name: layer.row for layer in layers.values()}
    for case in cases:
        with ExitStack() as scopes:
            for stepper in case.steppers:
                scopes.enter_context(labelled(stepper, labels))
            with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
                for _ in range(steps):
                    with record_function(STEP):
                        case.step()
        per_step = attribute(prof.events(), rows_of, case.ops if shapes else None)
        rows = {row for times in per_step for row in times}
        case.rows = {row: statistics.median(times.get(row, 0.0) for times in per_step) / 1e3 for row in rows}
    return cases, layers


# ---------------------------------------------------------------- the table
def table_rows(layers: dict[str, Layer]) -> list[str]:
    """The layer rows in forward order, forward then backward, then the step's own rows."""
    order = list(dict.fromkeys(layer.row for layer in layers.values()))
    return [f"{row} {direction}" for row in order for direction in ("fwd", "bwd")] + STEP_ROWS


def flop_by_row(layers: dict[str, Layer], members: int) -> dict[str, float]:
    flop: dict[str, float] = defaultdict(float)
    for layer in layers.values():
        if layer.fwd_flop:
            flop[f"{layer.row} fwd"] += layer.fwd_flop * members
            flop[f"{layer.row} bwd"] += layer.bwd_flop * members
    return flop


def table(model: str, members: int, layers: dict[str, Layer], cases: list[Case], peak: float) -> list[str]:
    """The profile table of one model: a row per layer and direction and per part of the step, and per case its
    ms per step, share of the profiled step and the time over the FLOP floor."""
    flop = flop_by_row(layers, members)
    floor = {row: f / peak / 1e6 for row, f in flop.items()}  # ms at the peak (GFLOP/s)
    head = f"{'':18} {'GFLOP':>7} {'floor':>7}" + "".join(f" | {c.name + ' ms':>11} {'%':>5} {'xfloor':>6}"
                                                           for c in cases)
    lines = [f"{model}: {members} members, batch 128; ms per step (separate: the sum of {members} steps), "
             f"% of the profiled step, floor = FLOP at {peak:.1f} GFLOP/s", head, "-" * len(head)]
    for row in table_rows(layers):
        line = f"{row:18} " + (f"{flop[row] / 1e9:7.3f} {floor[row]:7.2f}" if row in flop else f"{'':7} {'':7}")
        for case in cases:
            ms = case.rows.get(row, 0.0)
            share = 100 * ms / case.profiled_ms
            ratio = f"{ms / floor[row]:6.1f}" if row in floor else ""
            line += f" | {ms:11.2f} {share:5.1f} {ratio:>6}"
        lines.append(line)
    total_floor = sum(floor.values())
    lines.append("-" * len(head))
    line = f"{'profiled step':18} {sum(flop.values()) / 1e9:7.3f} {total_floor:7.2f}"
    for case in cases:
        line += f" | {case.profiled_ms:11.2f} {100 * sum(case.rows.values()) / case.profiled_ms:5.1f} " \
                f"{case.profiled_ms / total_floor:6.1f}"
    lines.append(line)
    line = f"{'step (unprofiled)':18} {'':7} {'':7}"
    for case in cases:
        line += f" | {case.step_ms:11.2f} {'':5} {case.step_ms / total_floor:6.1f}"
    lines.append(line)
    by_name = {case.name: case for case in cases}
    if "separate" in by_name:
        ratios = ", ".join(f"{name} {by_name['separate'].step_ms / by_name[name].step_ms:.2f}x"
                           for name in ("shared", "own") if name in by_name)
        lines.append(f"stacked speed-up over separate (unprofiled step times): {ratios}")
    return lines


def top_ops(model: str, case: Case, count: int, steps: int) -> list[str]:
    """The `count` ops of `case` with the most self time: ms per step (the mean), row, name and input shapes."""
    lines = [f"{model} {case.name}: the {count} ops of most time, ms per step"]
    for (row, name, shapes), us in sorted(case.ops.items(), key=lambda item: -item[1])[:count]:
        lines.append(f"{us / 1e3 / steps:9.2f}  {row:16} {name:40} {shapes}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "vgg5"])
    parser.add_argument("--members", type=int, help="members of a stack (default 16; VGG-5: 4, --full 16)")
    parser.add_argument("--steps", type=int, help="profiled steps per case (default 5, VGG-5 1; --full 20, 3)")
    parser.add_argument("--ops", type=int, default=0, help="also list each case's N ops of most time, with "
                                                               "their rows and input shapes")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = parse_sized(parser, quick={}, full={})
    torch.manual_seed(0)
    with warn_if_busy():
        peak = matmul_peak_flops(torch.device("cpu"), "fp32") / 1e9
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak {peak:.1f} GFLOP/s "
              "(fp32 2048x2048, best of 5: bench_loop.matmul_peak_flops)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for model in args.models:
                members = args.members or DEFAULT_MEMBERS.get(model, (16, 16))[args.full]
                steps = args.steps or DEFAULT_STEPS.get(model, (8, 30))[args.full]
                cases, layers = measure(model, args.cases, members, steps, Path(tmp), WARM_UP.get(model, 3),
                                        shapes=args.ops > 0)
                print("\n".join(["", *table(model, members, layers, cases, peak)]), flush=True)
                for case in cases if args.ops else ():
                    print("\n".join(["", *top_ops(model, case, args.ops, steps)]), flush=True)

if __name__ == "__main__":
    main()
