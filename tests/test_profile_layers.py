"""scripts/profile_layers.py: the FLOP it counts per layer, and its table on a tiny profile (2 members, 1 step)."""

import pytest
from profile_layers import CASES, STEP_ROWS, layers_of, measure, table

from losslab.models import LeNet

N = 128


def test_lenet_flop_are_counted_from_its_shapes():
    layers = {layer.name: layer for layer in layers_of(LeNet((1, 28, 28), 10), (1, 28, 28), N).values()}
    forward = {"conv1": 2 * N * 6 * 28 * 28 * 1 * 5 * 5, "conv2": 2 * N * 16 * 10 * 10 * 6 * 5 * 5,
               "fc1": 2 * N * 400 * 120, "fc2": 2 * N * 120 * 84, "fc3": 2 * N * 84 * 10}
    assert {name: layer.fwd_flop for name, layer in layers.items() if layer.fwd_flop} == forward
    assert layers["conv1"].bwd_flop == forward["conv1"]  # the image needs no gradient: the weight's alone
    assert all(layers[name].bwd_flop == 2 * flop for name, flop in forward.items() if name != "conv1")
    assert [layer.name for layer in layers.values()] == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                                          "flatten1", "fc1", "relu3", "fc2", "relu4", "fc3"]
    per_example = sum(layer.fwd_flop + layer.bwd_flop for layer in layers.values()) / N
    assert per_example == pytest.approx(2.27e6, rel=0.01)  # the estimate: about 2.5 MFLOP


def test_the_table_has_every_layer_and_its_shares_sum_to_all_of_the_step(tmp_path):
    cases, layers = measure("lenet", list(CASES), members=2, steps=1, tmp=tmp_path, warm_up=1)
    for case in cases:  # the backward ops are found: every convolution's backward took time
        assert case.rows["conv1 bwd"] > 0 and case.rows["conv2 bwd"] > 0
    lines = table("lenet", 2, layers, cases, peak=50.0)
    rows = {line[:18].strip(): line for line in lines[3:] if " | " in line}
    layer_rows = [f"{name} {direction}" for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                                      "flatten1", "fc1", "relu3", "fc2", "relu4", "fc3")
                  for direction in ("fwd", "bwd")]
    assert list(rows)[:len(layer_rows) + len(STEP_ROWS)] == layer_rows + STEP_ROWS
    for column in range(len(CASES)):
        shares = [float(line.split(" | ")[1 + column].split()[1]) for row, line in rows.items()
                  if row in layer_rows + STEP_ROWS]
        # each share is printed to 0.1 %: their sum is 100 within 0.05 per row
        assert sum(shares) == pytest.approx(100, abs=0.05 * len(shares) + 1e-9)
        assert float(rows["profiled step"].split(" | ")[1 + column].split()[1]) == 100.0  # the rows' unrounded sum
    floor = float(rows["conv1 fwd"].split(" | ")[0].split()[-1])
    assert floor == pytest.approx(2 * 2 * N * 6 * 28 * 28 * 25 / 50e9 * 1e3, abs=0.01)  # ms at 50 GFLOP/s
    assert lines[-1].startswith("stacked speed-up over separate")

