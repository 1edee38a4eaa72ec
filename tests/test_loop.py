"""The loop's contract: evaluation cadence, early stopping with best-weight restore, L2, schedulers,
shuffle, checkpoints, summary."""

import json
import math

import pytest
import torch
from helpers.commands import metrics_rows

from losslab.commands.cli import compose
from losslab.errors import ConfigError
from losslab.training.loop import distinct_batches, fit
from losslab.training.runs import build
from losslab.training.runtime import seed_everything

SYNTH = ["dataset=synthetic", "trainer.progress=log", "trainer.device=cpu"]


def test_eval_every_fraction_of_an_epoch(tmp_path):
    # synthetic: 2048 - 256 val = 1792 train images, batch 128 -> 14 steps/epoch; every 0.25 -> every 4 steps
    summary = fit(compose([*SYNTH, "trainer.epochs=2", "trainer.eval_every=0.25"]), tmp_path)
    steps = [int(r["step"]) for r in metrics_rows(tmp_path)]
    assert steps == [4, 8, 12, 16, 20, 24, 28, 28]  # evaluations, the run's last step, then the final row
    assert summary["steps"] == 28 and summary["status"] == "completed"
    final = metrics_rows(tmp_path)[-1]
    assert final["test/acc"] != "" and float(final["test/acc"]) == pytest.approx(summary["final"]["test/acc"])


def test_early_stopping_restores_the_best_weights(tmp_path):
    # 256 noisy training images and an FNN: it overfits within a few epochs
    cfg = compose([*SYNTH, "model=fnn", "dataset.train_n=512", "dataset.noise=300", "optimizer.lr=0.3",
                   "trainer.epochs=60", "trainer.eval_every=0.5", "trainer.patience=2"])
    summary = fit(cfg, tmp_path)
    assert summary["status"] == "early_stopped"
    evals = metrics_rows(tmp_path)[:-1]
    losses = [float(r["val/loss"]) for r in evals]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) - 1 - best == 2  # stopped after `patience` evaluations without improvement
    assert summary["best"]["step"] == int(evals[best]["step"])
    # the final evaluation runs on the restored best weights: same val loss as at the best evaluation
    assert summary["final"]["val/loss"] == pytest.approx(losses[best], rel=1e-5)
    best_ckpt = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best_ckpt["step"] == summary["best"]["step"]


def test_trainer_monitor_decides_which_evaluation_is_best(tmp_path, trains):
    """Noisy synthetic data: val/acc tops out early while val/nll keeps falling, so the two criteria pick different
    evaluations; best.pt and the summary's best follow trainer.monitor (the first of equal values)."""
    common = [*SYNTH, "model=fnn", "dataset.noise=3.0", "optimizer.lr=0.5", "trainer.epochs=4",
              "trainer.eval_every=0.5", "trainer.figures=false"]
    picked = {}
    for monitor, mode in (("val/nll", "min"), ("val/acc", "max")):
        run_dir = tmp_path / mode
        summary = trains(compose([*common, f"trainer.monitor={monitor}", f"trainer.monitor_mode={mode}"]), run_dir)
        evals = metrics_rows(run_dir)[:-1]
        values = [float(r[monitor]) for r in evals]
        expected = int(evals[values.index((min if mode == "min" else max)(values))]["step"])
        best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
        assert best["step"] == summary["best"]["step"] == expected
        assert summary["monitor"] == {"metric": monitor, "mode": mode}
        picked[monitor] = expected
    assert picked["val/nll"] != picked["val/acc"]


def test_an_unknown_monitor_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.monitor='val/accuracy' is not one of .*val/acc"):
        fit(compose([*SYNTH, "trainer.monitor=val/accuracy"]), tmp_path)


def first_step_weights(overrides, tmp_path):
    """Weights after one SGD step of `fit` and of an independent computation from the same init."""
    cfg = compose([*SYNTH, "model=fnn", "trainer.max_steps=1", "trainer.shuffle=false", *overrides])
    fit(cfg, tmp_path)
    trained = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]

    seed_everything(cfg.seed, False)
    data, loss_fn, model, _, _ = build(cfg, torch.device("cpu"))
    x, y = data.train_x[: cfg.trainer.batch_size], data.train_y[: cfg.trainer.batch_size]  # no shuffle
    penalty = sum((p**2).sum() for name, p in model.named_parameters() if name.endswith("weight"))
    (loss_fn(model(x), y) + cfg.trainer.l2 * penalty).backward()
    expected = {name: p.detach() - cfg.optimizer.lr * p.grad for name, p in model.named_parameters()}
    return trained, expected


@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_l2_adds_2_lambda_w_to_weights_not_biases(l2, tmp_path):
    trained, expected = first_step_weights([f"trainer.l2={l2}"], tmp_path)
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6)


def test_shuffle_changes_the_first_batch(tmp_path):
    trained, expected = first_step_weights(["trainer.shuffle=true"], tmp_path)
    assert not torch.allclose(trained["net.1.weight"], expected["net.1.weight"])


@pytest.mark.parametrize("scheduler, expected", [
    ("step", lambda e: 0.1 * 0.5 ** (e // 1)),
    ("cosine", lambda e: 0.1 * (1 + math.cos(math.pi * e / 4)) / 2),
])
def test_epoch_schedulers(scheduler, expected, tmp_path):
    extra = ["scheduler.step_size=1", "scheduler.gamma=0.5"] if scheduler == "step" else []
    fit(compose([*SYNTH, f"scheduler={scheduler}", *extra, "trainer.epochs=4"]), tmp_path)
    lrs = [float(r["lr"]) for r in metrics_rows(tmp_path)[:-1]]  # logged at each epoch's end, before the epoch step
    assert lrs == pytest.approx([expected(e) for e in range(4)])


def test_plateau_scheduler_decays_when_val_loss_stalls(tmp_path):
    cfg = compose([*SYNTH, "scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5", "model=fnn",
                   "dataset.train_n=512", "dataset.noise=300", "optimizer.lr=0.3", "trainer.epochs=8",
                   "trainer.eval_every=0.5"])
    fit(cfg, tmp_path)
    evals = metrics_rows(tmp_path)[:-1]
    losses, lrs = [float(r["val/loss"]) for r in evals], [float(r["lr"]) for r in evals]
    best = math.inf
    for i, loss in enumerate(losses[:-1]):  # every stall halves the lr seen at the next evaluation
        stalled = loss >= best * (1 - 1e-4)  # ReduceLROnPlateau's default relative threshold
        best = best if stalled else loss
        assert lrs[i + 1] == pytest.approx(lrs[i] * (0.5 if stalled else 1.0))
    assert min(lrs) < 0.3


def test_summary_and_checkpoints(tmp_path):
    summary = fit(compose([*SYNTH, "model=lenet", "trainer.epochs=1"]), tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == summary["status"] == "completed"
    assert set(on_disk["final"]) >= {f"{s}/{m}" for s in ("train", "val", "test") for m in ("loss", "acc")}
    assert on_disk["device"] == "cpu" and on_disk["samples_per_s"] > 0 and on_disk["wall_s"] > 0
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    cfg = compose([*SYNTH, "model=lenet"])
    _, _, model, optimizer, _ = build(cfg, torch.device("cpu"))
    model.load_state_dict(last["model"])
    optimizer.load_state_dict(last["optimizer"])
    assert last["progress"]["epoch"] == 1 and last["progress"]["step"] == summary["steps"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_l2_reaches_the_dual_linear_weights_but_not_its_bias(tmp_path):
    cfg = compose([*SYNTH, "dataset.num_classes=2", "model=dual_linear", "loss=bce", "trainer.l2=0.5",
                   "trainer.max_steps=1", "trainer.shuffle=false"])
    fit(cfg, tmp_path)
    trained = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    seed_everything(cfg.seed, False)
    data, loss_fn, model, _, _ = build(cfg, torch.device("cpu"))
    x, y = data.train_x[:128], data.train_y[:128]
    (loss_fn(model(x), y) + 0.5 * (model.w1.square().sum() + model.G1.square().sum())).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(trained[name], p.detach() - cfg.optimizer.lr * p.grad, rtol=1e-5, atol=1e-7)


def test_learns_synthetic_well_above_chance(tmp_path, trains):
    summary = trains(compose([*SYNTH, "model=fnn", "trainer.epochs=3"]), tmp_path)
    assert summary["final"]["test/acc"] > 0.9  # 4 classes: chance is 0.25


def test_explicit_device_must_exist(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        fit(compose([*SYNTH, "trainer.device=cuda"]), tmp_path)


def test_runs_of_one_data_order_in_equal_blocks_share_a_batch():
    """Orders of seeds (0, 0, 1, 1, 2, 2) give 3 batches; interleaved seeds, unequal blocks or augmenting runs
    give one batch per run; one order for all, one batch."""
    seeds = [torch.randperm(50, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]

    def orders(*numbers):
        return torch.stack([seeds[n] for n in numbers])

    assert distinct_batches(orders(0, 0, 1, 1, 2, 2), augmenting=False) == 3
    assert distinct_batches(orders(1, 1, 1, 1), augmenting=False) == 1
    assert distinct_batches(orders(0, 1, 0, 1), augmenting=False) == 4
    assert distinct_batches(orders(0, 0, 0, 1, 1), augmenting=False) == 5
    assert distinct_batches(orders(0, 0, 1, 1, 1, 1), augmenting=False) == 3  # three blocks of two
    assert distinct_batches(orders(0, 0, 1, 1, 0, 0), augmenting=False) == 3  # blocks, though two are alike
    assert distinct_batches(orders(0, 0, 1, 1), augmenting=True) == 4
