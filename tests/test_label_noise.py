"""Label noise (dataset.label_noise): the realised rates against r, the maps, the untouched test split, the noise's
own seed, the refusals, and train/clean_acc against the run's own model on the true labels."""

from __future__ import annotations

import math
import os
import re
import signal

import pytest
import torch
from helpers.commands import metrics_rows, summary
from helpers.fixtures import CIFAR10_CLASSES
from helpers.tb_events import read_events
from scipy.stats import chisquare

from losslab.commands.cli import compose
from losslab.config import check
from losslab.data import load_splits
from losslab.data.label_noise import flip_labels
from losslab.errors import ConfigError, Interrupted
from losslab.stacking.steppers import group_key
from losslab.training.hooks import subscribe, unsubscribe
from losslab.training.loop import fit, fit_group
from losslab.training.runs import Job, build_run

CPU = torch.device("cpu")
NOISY = ["dataset=synthetic", "dataset.label_noise=symmetric", "dataset.noise_rate=0.4"]
PATRINI_MNIST = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}  # Patrini et al. 2017's class-conditional flips of MNIST digits


def load(*overrides: str):
    return load_splits(compose(list(overrides)).dataset, CPU)


def within_3_standard_errors(flipped: int, n: int, rate: float) -> bool:
    return abs(flipped / n - rate) <= 3 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("rate", [0.05, 0.4, 0.8])
def test_symmetric_noise_flips_at_rate_r_to_a_uniformly_drawn_other_class(rate):
    k, n = 10, 100_000
    y = torch.randint(k, (n,), generator=torch.Generator().manual_seed(1))
    noisy = flip_labels(y, "symmetric", rate, k, None, torch.Generator().manual_seed(2))
    flipped = noisy != y
    assert within_3_standard_errors(int(flipped.sum()), n, rate)
    # a flipped label is each of the K - 1 other classes with probability 1/(K - 1): the offsets noisy - y mod K
    # pass a chi-square test of uniformity (one test of the K - 1 counts, not K - 1 tests at 3 standard errors)
    offsets = torch.bincount((noisy[flipped] - y[flipped]) % k, minlength=k)
    assert offsets[0] == 0
    assert chisquare(offsets[1:].numpy()).pvalue > 1e-3


def test_asymmetric_noise_flips_the_mapped_mnist_digits_at_rate_r_and_no_others():
    rate = 0.3
    clean = load("dataset=mnist", "dataset.normalize=unit")
    noisy = load("dataset=mnist", "dataset.normalize=unit", "dataset.label_noise=asymmetric",
                 f"dataset.noise_rate={rate}")
    for split in ("train", "val"):
        true, given = clean.split(split)[1], noisy.split(split)[1]
        changed = given != true
        mapped = torch.tensor([int(c) in PATRINI_MNIST for c in true])
        assert not changed[~mapped].any()
        assert all(int(g) == PATRINI_MNIST[int(t)] for t, g in zip(true[changed], given[changed]))
        assert within_3_standard_errors(int(changed.sum()), int(mapped.sum()), rate)
        assert noisy.label_noise["realised_rate"][split] == int(changed.sum()) / int(mapped.sum())
    for digit in PATRINI_MNIST:  # each mapped class at rate r
        of_digit = clean.train_y == digit
        assert within_3_standard_errors(int((noisy.train_y[of_digit] != digit).sum()), int(of_digit.sum()), rate)
    assert torch.equal(noisy.test_y, clean.test_y)


def test_asymmetric_noise_of_cifar10_flips_the_classes_the_literature_names(fixture_root):
    """Patrini et al. 2017's CIFAR-10 flips, by the class names the dataset's batches.meta gives."""
    names = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    common = ["dataset=cifar10", f"dataset.root={fixture_root}", "dataset.download=false", "dataset.val_size=50"]
    clean = load(*common)
    noisy = load(*common, "dataset.label_noise=asymmetric", "dataset.noise_rate=0.5")
    changed = noisy.train_y != clean.train_y
    flips = {(CIFAR10_CLASSES[t], CIFAR10_CLASSES[g]) for t, g in zip(clean.train_y[changed], noisy.train_y[changed])}
    assert flips == set(names.items())  # 450 images at rate 0.5: each of the five flips happens


@pytest.mark.parametrize("val_from", ["train", "test"])
def test_train_and_val_labels_are_flipped_and_the_test_labels_never(val_from):
    clean = load("dataset=synthetic", f"dataset.val_from={val_from}")
    noisy = load(*NOISY, f"dataset.val_from={val_from}")
    assert torch.equal(noisy.test_y, clean.test_y) and torch.equal(noisy.test_x, clean.test_x)
    assert torch.equal(noisy.train_clean_y, clean.train_y) and clean.train_clean_y is None
    for split in ("train", "val"):
        true, given = clean.split(split)[1], noisy.split(split)[1]
        assert within_3_standard_errors(int((given != true).sum()), len(true), 0.4)
        assert noisy.label_noise["realised_rate"][split] == int((given != true).sum()) / len(true)
        counts = [[int(((true == i) & (given == j)).sum()) for j in range(4)] for i in range(4)]
        assert noisy.label_noise["flip_matrix"][split] == counts


def test_the_noise_seed_alone_decides_which_examples_flip(tmp_path):
    """The same noise_seed flips the same examples for every training seed and every loss; another one others."""
    labels = []
    for seed in (0, 1):
        for loss in ("ce", "mbce"):
            _, data = build_run(Job(compose([*NOISY, f"seed={seed}", f"loss={loss}"]), tmp_path), CPU)
            labels.append((data.train_y, data.val_y))
    assert all(torch.equal(a, b) for pair in labels[1:] for a, b in zip(pair, labels[0]))
    other = load(*NOISY, "dataset.noise_seed=1")
    assert not torch.equal(other.train_y, labels[0][0])


def test_noise_settings_are_part_of_what_makes_runs_stackable():
    key = group_key(compose(NOISY))
    assert group_key(compose([*NOISY, "seed=3"])) == key
    for other in (["dataset.noise_seed=1"], ["dataset.noise_rate=0.2"], ["dataset.label_noise=none",
                                                                        "dataset.noise_rate=0"]):
        assert group_key(compose([*NOISY, *other])) != key, other


@pytest.mark.parametrize("overrides, words", [
    (["dataset.label_noise=symmetric", "dataset.noise_rate=1"], "dataset.noise_rate must be in [0, 1), got 1"),
    (["dataset.label_noise=symmetric", "dataset.noise_rate=-0.1"], "dataset.noise_rate must be in [0, 1)"),
    (["dataset.noise_rate=0.2"], "dataset.noise_rate=0.2 flips nothing with dataset.label_noise=none; set"),
    (["dataset.label_noise=pairwise"], "dataset.label_noise='pairwise' is not one of none, symmetric, asymmetric"),
])
def test_bad_noise_settings_are_refused_in_one_sentence(overrides, words):
    with pytest.raises(ConfigError, match="^" + re.escape(words)):
        check(compose(["dataset=synthetic", *overrides]))


def test_asymmetric_noise_without_a_flip_map_names_the_datasets_that_have_one():
    words = "dataset.label_noise=asymmetric has no flip map for dataset synthetic, only for cifar10, mnist; "
    with pytest.raises(ConfigError, match="^" + re.escape(words)):
        load("dataset=synthetic", "dataset.label_noise=asymmetric", "dataset.noise_rate=0.2")


def predicted_hits(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).sum().item() / len(y)


@pytest.mark.parametrize("seeds", [(0,), (0, 1)], ids=["alone", "stacked"])
def test_train_clean_acc_is_the_accuracy_on_the_true_labels(tmp_path, seeds):
    """One step without shuffling: train/clean_acc of the first batch from each run's initial model, and the final
    train/clean_acc of the whole train split from its last weights, each against the true labels."""
    overrides = [*NOISY, "model=linear", "trainer.progress=log", "trainer.device=cpu", "trainer.figures=false",
                 "trainer.shuffle=false", "trainer.max_steps=1"]
    jobs = [Job(compose([*overrides, f"seed={seed}"]), tmp_path / str(seed)) for seed in seeds]
    initial = [build_run(Job(job.cfg, tmp_path / "initial"), CPU) for job in jobs]
    summaries = fit_group(jobs) if len(jobs) > 1 else [fit(jobs[0].cfg, jobs[0].run_dir)]
    for job, (run, data), result in zip(jobs, initial, summaries):
        batch = slice(0, job.cfg.trainer.batch_size)
        step, final = metrics_rows(job.run_dir)
        x, noisy, clean = data.train_x[batch], data.train_y[batch], data.train_clean_y[batch]
        assert float(step["train/clean_acc"]) == pytest.approx(predicted_hits(run.model, x, clean), abs=1e-12)
        assert float(step["train/acc"]) == pytest.approx(predicted_hits(run.model, x, noisy), abs=1e-12)
        run.model.load_state_dict(torch.load(job.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"])
        expected = predicted_hits(run.model, data.train_x, data.train_clean_y)
        assert result["final"]["train/clean_acc"] == pytest.approx(expected, abs=1e-12)
        assert float(final["train/clean_acc"]) == pytest.approx(expected, abs=1e-12)
        assert result["label_noise"] == data.label_noise
        assert len(jobs) == 1 or result["stacked"]["members"] == len(jobs)
        tb = read_events(job.run_dir)
        assert [e.value for e in tb.Scalars("train/clean_acc")] == pytest.approx([float(step["train/clean_acc"])])


def test_a_noisy_run_stopped_between_evaluations_resumes_to_the_same_metrics(tmp_path):
    """Stopped at step 3 of 8 (evaluations every 2), its last.pt holds step 3's hits on the true labels."""
    cfg = compose([*NOISY, "dataset.train_n=768", "trainer.epochs=2", "trainer.eval_every=0.5", "trainer.progress=log",
                   "trainer.device=cpu", "trainer.figures=false"])
    fit(cfg, tmp_path / "whole")

    def stop_at_step_3(point, at, jobs):
        if (point, at) == ("step", 3):
            os.kill(os.getpid(), signal.SIGTERM)

    subscribe(stop_at_step_3)
    try:
        with pytest.raises(Interrupted):
            fit(cfg, tmp_path / "resumed")
    finally:
        unsubscribe(stop_at_step_3)
    fit(cfg, tmp_path / "resumed", resume=True)
    whole, resumed = metrics_rows(tmp_path / "whole"), metrics_rows(tmp_path / "resumed")
    assert len(whole) == 5 and all(row["train/clean_acc"] != "" for row in whole)
    assert resumed == whole


def test_a_run_without_noise_has_no_clean_accuracy(tmp_path):
    result = fit(compose(["dataset=synthetic", "trainer.progress=log", "trainer.device=cpu", "trainer.figures=false",
                          "trainer.max_steps=2"]), tmp_path)
    assert result["label_noise"] is None and "train/clean_acc" not in result["final"]
    assert "train/clean_acc" not in metrics_rows(tmp_path)[0]


def test_a_noisy_run_records_its_noise_and_its_clean_accuracy(tmp_path, losslab):
    run_dir = tmp_path / "run"
    done = losslab.train(*NOISY, "trainer.epochs=3", "trainer.figures=false", f"hydra.run.dir={run_dir}",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = summary(run_dir)
    noise, train_n = result["label_noise"], result["images"]["train"]
    assert (noise["kind"], noise["rate"], noise["seed"]) == ("symmetric", 0.4, 0)
    matrix = noise["flip_matrix"]["train"]
    assert sum(map(sum, matrix)) == train_n
    flipped = train_n - sum(matrix[k][k] for k in range(len(matrix)))
    assert noise["realised_rate"]["train"] == flipped / train_n
    assert within_3_standard_errors(flipped, train_n, 0.4)
    rows = metrics_rows(run_dir)
    assert all(row["train/clean_acc"] != "" for row in rows)
    # separable clusters: the model learns the true classes, which disagree with 40 % of the labels it is given
    assert result["final"]["train/clean_acc"] > result["final"]["train/acc"] + 0.2
    text = read_events(run_dir).Tensors("label_noise/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("symmetric label noise at rate 0.4") and "| true \\ given |" in text


def test_noise_of_a_stack_is_the_noise_of_its_separate_runs(tmp_path, losslab):
    """hydra/launcher=stacked: two seeds as one stack share the data, flipped alike, as separate runs are."""
    grid = [*NOISY, "trainer.epochs=1", "trainer.figures=false", "trainer.progress=log", "seed=0,1"]
    outputs = {}
    for launcher in ("basic", "stacked"):
        proc = losslab.sweep(*grid, f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path / launcher}",
                             cwd=tmp_path)
        assert proc.returncode == 0, proc.output
        outputs[launcher] = proc.output
    assert "2 jobs stacked" in outputs["stacked"]
    runs = {launcher: sorted(p.parent for p in (tmp_path / launcher).rglob("summary.json"))
            for launcher in ("basic", "stacked")}
    records = [summary(run)["label_noise"] for launcher in runs for run in runs[launcher]]
    assert len(records) == 4 and all(record == records[0] for record in records)
    for alone, together in zip(runs["basic"], runs["stacked"]):
        for a, b in zip(metrics_rows(alone), metrics_rows(together)):
            assert float(b["train/clean_acc"]) == pytest.approx(float(a["train/clean_acc"]), abs=1e-6)


@pytest.mark.parametrize("seeds", [(0,), (0, 1)], ids=["alone", "stacked"])
def test_best_test_metrics_are_those_of_best_pt_and_the_final_ones_those_of_last_pt(tmp_path, seeds):
    """trainer.test_best: best/test/acc is the test accuracy of best.pt's weights, and evaluating them leaves the
    final weights (last.pt, test/acc) as they were; alone and as members of a stack. SGD at lr 2 under 60 % noise
    peaks before its last evaluation, so the two differ."""
    overrides = ["dataset=mnist", "dataset.train_size=2000", "dataset.label_noise=symmetric", "dataset.noise_rate=0.6",
                 "model=linear", "optimizer.lr=2.0", "trainer.progress=log", "trainer.device=cpu",
                 "trainer.figures=false", "trainer.epochs=3", "trainer.eval_every=0.5", "trainer.test_best=true",
                 "trainer.monitor=val/acc", "trainer.monitor_mode=max"]
    jobs = [Job(compose([*overrides, f"seed={seed}"]), tmp_path / str(seed)) for seed in seeds]
    summaries = fit_group(jobs) if len(jobs) > 1 else [fit(jobs[0].cfg, jobs[0].run_dir)]
    for job, result in zip(jobs, summaries):
        run, data = build_run(Job(job.cfg, tmp_path / "fresh"), CPU)
        x, y = data.split("test")
        for checkpoint, key in (("best.pt", "best/test/acc"), ("last.pt", "test/acc")):
            state = torch.load(job.run_dir / "checkpoints" / checkpoint, weights_only=True)
            run.model.load_state_dict(state["model"])
            assert result["final"][key] == pytest.approx(predicted_hits(run.model, x, y), abs=1e-12), checkpoint
        assert result["final"]["best/test/acc"] != result["final"]["test/acc"]  # else this test could not tell
        tb = read_events(job.run_dir)
        assert [e.value for e in tb.Scalars("best/test/acc")] == pytest.approx([result["final"]["best/test/acc"]])
