"""The loss research suite inside the loop: learnable loss parameters, the entropy-gradient rule on real
MNIST, and the EMNIST VGG-5 presets."""

import pytest
import torch
from helpers.commands import metrics_rows
from helpers.tb_events import read_events

from losslab.commands.cli import compose
from losslab.training.loop import fit
from losslab.training.runs import build

SYNTH = ["dataset=synthetic", "trainer.progress=log", "trainer.device=cpu"]


@pytest.mark.parametrize("loss", ["min_ent", "mix_ent"])
def test_learnable_loss_parameters_train_checkpoint_and_log(loss, tmp_path):
    overrides = [*SYNTH, f"loss={loss}", "loss.coeffs=learnable", "loss.bases=learnable", "loss.param_lr=0.05",
                 "trainer.epochs=2", "model=fnn"]
    cfg = compose(overrides)
    _, loss_fn, _, optimizer, _ = build(cfg, torch.device("cpu"))
    initial = {k: v.item() for k, v in loss_fn.logged().items()}
    loss_group = optimizer.param_groups[1]
    assert loss_group["lr"] == 0.05 and {id(p) for p in loss_group["params"]} == {id(p) for p in loss_fn.parameters()}
    assert not {id(p) for p in optimizer.param_groups[0]["params"]} & {id(p) for p in loss_fn.parameters()}

    summary = fit(cfg, tmp_path)
    events = read_events(tmp_path)
    tags = events.Tags()["scalars"]
    for tag in ("loss/beta1", "loss/beta2", "loss/base1", "loss/base2"):
        assert tag in tags
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 28  # every step (2 epochs x 14 steps)
        assert values[0] == pytest.approx(initial[tag], rel=1e-6)  # logged with the loss it produced
        assert values[-1] != pytest.approx(initial[tag], abs=1e-4)  # learnt
        # metrics.csv: the value after each evaluation's step (2 epochs), then the final row's
        in_csv = [float(row[tag]) for row in metrics_rows(tmp_path)]
        assert len(in_csv) == 3 and in_csv[-1] == pytest.approx(summary["final"][tag], rel=1e-6)
        assert in_csv[0] != pytest.approx(initial[tag], abs=1e-4)
    # the checkpoint carries the loss state, and loading it restores the learnt values
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    _, fresh_loss, _, _, _ = build(cfg, torch.device("cpu"))
    fresh_loss.load_state_dict(last["loss"])
    for tag, value in fresh_loss.logged().items():
        assert value.item() == pytest.approx(summary["final"][tag], rel=1e-6)
    assert "pred/entropy" in tags and "val/entropy" in tags


def test_fixed_loss_parameters_add_no_param_group():
    _, loss_fn, _, optimizer, _ = build(compose([*SYNTH, "loss=min_ent"]), torch.device("cpu"))
    assert len(optimizer.param_groups) == 1 and not list(loss_fn.parameters())


def test_even_odd_bce_baseline_and_entropy_gradient_on_real_mnist(tmp_path, trains):
    short = ["trainer.epochs=3", "trainer.progress=log"]
    bce = trains(compose(["experiment=even_odd_bce", *short]), tmp_path / "bce")
    assert bce["final"]["test/acc"] >= 0.88
    rule = trains(compose(["experiment=even_odd_entropy_gradient", *short]), tmp_path / "rule")
    assert rule["status"] == "completed"
    assert rule["final"]["test/acc"] < bce["final"]["test/acc"]  # label-free: expected near chance
    events = read_events(tmp_path / "rule")
    fractions = [e.value for e in events.Scalars("entropy_gradient/scaled_fraction")]
    deltas = [e.value for e in events.Scalars("entropy_gradient/delta")]
    assert len(fractions) == 3 and max(fractions) > 0  # the z-constraint was active
    assert deltas == pytest.approx([0.1, 0.09, 0.081])  # δ_e = max(δ_min, δ_0 γ^e)
    for tag in ("entropy_gradient/mean_scale", "entropy_gradient/max_dz"):
        assert len(events.Scalars(tag)) == 3


@pytest.mark.parametrize("experiment", ["emnist_vgg5_ce", "emnist_vgg5_min_ent", "emnist_vgg5_mix_ent"])
def test_emnist_presets_train_a_debug_batch_on_fixture_files(experiment, fixture_root, tmp_path, trains):
    cfg = compose([f"experiment={experiment}", "trainer=debug", "trainer.progress=log", f"dataset.root={fixture_root}",
                   "dataset.download=false", "dataset.val_size=100", "trainer.batch_size=8",
                   "trainer.eval_batch_size=16"])
    assert cfg.optimizer.lr == 0.005 and cfg.model.dropout == 0.5 and list(cfg.dataset.mean) == [0.1307]
    summary = trains(cfg, tmp_path)  # VGG-5: its one batch counts as training, as in test_combinations.py
    assert summary["status"] == "completed" and summary["steps"] == 1


@pytest.mark.parametrize("loss", ["ce", "min_ent", "mix_ent"])
def test_vgg5_learns_synthetic_with_each_loss(loss, tmp_path, trains):
    cfg = compose([*SYNTH, "model=vgg5", f"loss={loss}", "optimizer=adam", "dataset.train_n=768",
                   "dataset.val_size=128", "dataset.test_n=256", "trainer.epochs=2", "trainer.batch_size=32"])
    summary = trains(cfg, tmp_path)
    assert summary["final"]["test/acc"] > 0.6  # 4 classes: chance is 0.25
