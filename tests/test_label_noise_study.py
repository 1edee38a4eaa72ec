"""The label_noise_mnist study as designed: two noise settings, nine losses each tuned on one shared budget plus
CE untuned, every row's config composes, every search space is one its loss accepts, and a tiny run of one row
trains its trials and seeds and builds the page."""

from study_pages.reproduce import check_search_spaces, main
from study_pages.studies import (
    LABEL_NOISE_MNIST,
    NOISE_LOSSES,
    NOISE_REFERENCE,
    NOISE_SETTINGS,
    NOISE_TUNING,
    STUDIES,
    Multirun,
    Tuned,
)

from losslab.commands.cli import compose
from losslab.records.job_dirs import job_dirs
from losslab.reporting.statistics import reference_config
from losslab.reporting.sweep_data import Config

LOSSES = ("ce", "ce", "focal", "gce", "sce", "mae", "confidence_penalty", "min_ent", "mix_ent")


def test_each_noise_setting_is_a_table_of_the_nine_losses_tuned_on_one_budget_and_ce_untuned():
    study = STUDIES["label_noise_mnist"]
    assert study is LABEL_NOISE_MNIST and len(study.tables) == len(NOISE_SETTINGS) == 5
    names = [run.name for run in study.multiruns()]
    assert len(names) == len(set(names))  # one sweep dir each
    for table, (setting, noise, _) in zip(study.tables, NOISE_SETTINGS):
        assert all(run.name.startswith(f"{setting}_") for run in table.multiruns)
        *tuned, untuned = table.multiruns
        assert [run.label["loss"] for run in tuned] == list(LOSSES)
        assert all(isinstance(run, Tuned) and run.tuning == NOISE_TUNING for run in tuned)
        assert all(set(noise) <= set(run.fixed) for run in tuned)
        assert isinstance(untuned, Multirun) and untuned.label["tuned"] == "no"
        assert "optimizer.lr" not in " ".join(untuned.fixed)  # the preset's lr
        # the reference is tuned CE alone: label smoothing's tuned row leaves loss.label_smoothing to the tuning
        labels = [run.label for run in table.multiruns]
        assert [label for label in labels if all(label.get(k) == v for k, v in NOISE_REFERENCE.items())] == [
            tuned[0].label]
        assert table.compared[0] == "test/acc" and table.test_set and table.margins
    assert NOISE_TUNING.trials >= 1 and NOISE_TUNING.seeds == "0,1,2,3,4"


def test_every_row_composes_and_every_search_space_is_one_its_loss_accepts():
    study = STUDIES["label_noise_mnist"]
    check_search_spaces(study, study.multiruns())  # composes each tuned row and tries the ends of its ranges
    for table in study.tables:  # CE tuned and untuned: the preset under the table's noise
        for run in (table.multiruns[0], table.multiruns[-1]):
            config = compose([o for o in run.overrides() if not o.startswith("seed=")])
            assert config.model._target_ == "losslab.models.FNN" and config.dataset.name == "mnist"
            assert config.trainer.monitor == "val/acc" and config.dataset.label_noise in ("symmetric", "asymmetric")
            assert config.dataset.train_size == 10000 and config.loss.label_smoothing == 0.0
    own = {name: set(space) for name, _, space in NOISE_LOSSES}
    assert own["ce"] == own["mae"] == set() and all(own[name] for name in own if name not in ("ce", "mae"))


def test_a_table_whose_reference_has_not_run_compares_nothing():
    one = Config({"loss": "sce", "tuned": "yes"})
    assert reference_config(one, [one], NOISE_REFERENCE) is None


def test_one_row_tunes_and_retrains_and_the_page_is_built(trains, tmp_path):
    """sym0.4_sce and CE untuned at a few steps of a few images: the row's trials, its seeds, the page."""
    out, docs = tmp_path / "out", tmp_path / "docs"
    tiny = ["trainer.max_steps=2", "trainer.progress=log", "trainer.checkpoints=false", "dataset.train_size=256",
            "trainer.limit_eval_batches=1", "seed=0,1"]
    args = ["label_noise_mnist", "--out", str(out), "--docs", str(docs), *tiny,
            "--only", "sym0.4_sce", "sym0.4_ce_untuned"]
    assert main(args) == 0
    study_dir = out / "label_noise_mnist"
    assert len(job_dirs(study_dir / "sym0.4_sce" / "tune")) == NOISE_TUNING.trials
    assert len(job_dirs(study_dir / "sym0.4_sce")) == 2 and len(job_dirs(study_dir / "sym0.4_ce_untuned")) == 2
    page = (docs / "label_noise_mnist.md").read_text()
    assert "### MNIST, symmetric noise 0.4: nine losses, each tuned" in page
    assert "Not run yet: sym0.4_ce" in page  # the rows not asked for

