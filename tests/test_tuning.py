"""Equal-budget tuning in a study (study_pages.studies.Tuned): each tuned row gets the same number of Optuna trials,
the best trial's values are retrained over the seeds, a second run trains nothing, and the page shows the choice."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from study_pages.reproduce import main
from study_pages.studies import STUDIES, Headline, Multirun, Study, Table, Tuned, Tuning

from losslab.records.job_dirs import job_dirs

TRIALS = 3
TUNING = Tuning(trials=TRIALS, shared={"optimizer.lr": "tag(log,interval(1e-3,1e-1))"}, seeds="0,1", batch=2)
NOISE = ("model=linear", "dataset.label_noise=symmetric", "dataset.noise_rate=0.4")
ROWS = (Tuned("ce", "entropy_losses_mnist", ("loss=ce", *NOISE), TUNING),
        Tuned("focal", "entropy_losses_mnist", ("loss=focal", *NOISE), TUNING, space={"loss.gamma": "interval(0,5)"}))
TITLE = "MNIST, symmetric noise 0.4, tuned"
TINY = ["trainer.max_steps=2", "trainer.progress=log", "trainer.checkpoints=false", "trainer.figures=false",
        "dataset.train_size=256", "trainer.limit_eval_batches=1"]


def tiny_study(*rows: Tuned | Multirun) -> Study:
    tuned_ce = {"loss": "ce", "tuned": "yes"}
    return Study(name="tuned_tiny", title="A tiny tuned study", original="None: a test.",
                 tables=(Table(TITLE, rows, ("val/acc", "test/acc"), reference=tuned_ce, reference_name="tuned ce",
                               compared=("test/acc",)),),
                 headlines=(Headline(0, tuned_ce, "test/acc", "tuned CE"),))


@pytest.fixture
def study(monkeypatch):
    """The tiny study among the studies reproduce.py knows, for this test only: CE untuned and tuned, focal tuned."""
    tiny = tiny_study(ROWS[0].untuned(), *ROWS)
    monkeypatch.setitem(STUDIES, tiny.name, tiny)
    return tiny


def overrides_of(job: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))


def summary_times(study_dir: Path) -> dict[str, int]:
    return {str(path.relative_to(study_dir)): path.stat().st_mtime_ns for path in study_dir.rglob("summary.json")}


def page_table(page: Path, title: str) -> list[dict[str, str]]:
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line == f"### {title}")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| "))
    columns = [c.strip() for c in lines[header].strip("|").split(" | ")]
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("| "):
            break
        rows.append(dict(zip(columns, (c.strip() for c in line.strip("|").split(" | ")))))
    return rows


def test_each_loss_gets_the_same_trials_and_its_best_values_are_retrained_over_the_seeds(study, tmp_path, trains,
                                                                                          capsys):
    out, docs = tmp_path / "out", tmp_path / "docs"
    args = [study.name, "--out", str(out), "--docs", str(docs), *TINY]
    assert main(args) == 0
    study_dir = out / study.name
    chosen = {}
    for row in ROWS:
        tune, seeds = study_dir / row.name / "tune", study_dir / row.name
        trials = job_dirs(tune)
        assert len(trials) == TRIALS  # the equal budget
        summaries = [json.loads((trial / "summary.json").read_text()) for trial in trials]
        assert all(s["status"] == "completed" and s["seed"] == 0 for s in summaries)
        assert all(set(overrides_of(t)) >= {"optimizer.lr", *row.space} for t in trials)
        results = yaml.safe_load((tune / "optimization_results.yaml").read_text())
        assert set(results["best_params"]) == {"optimizer.lr", *row.space}
        # the best trial is the one with the highest final val/acc (the objective is its negation)
        assert results["best_value"] == min(-s["final"]["val/acc"] for s in summaries)
        retrained = job_dirs(seeds)
        assert sorted(overrides_of(job)["seed"] for job in retrained) == ["0", "1"]
        for job in retrained:
            given = overrides_of(job)
            assert {key: float(given[key]) for key in results["best_params"]} == results["best_params"]
            assert given["trainer.monitor"] == "val/acc" and given["trainer.monitor_mode"] == "max"
            assert json.loads((job / "summary.json").read_text())["label_noise"]
        chosen[row.name] = results

    page = docs / f"{study.name}.md"
    rows = page_table(page, TITLE)
    assert [(r["loss"], r["tuned"], r["n"]) for r in rows] == [("ce", "no", "2"), ("ce", "yes", "2"),
                                                               ("focal", "yes", "2")]
    compared = page_table(page, f"{TITLE}: compared with tuned ce")  # what the tuning gained, and focal's margin
    assert [(r["loss"], r["tuned"], r["pairs"]) for r in compared] == [("ce", "no", "2"), ("focal", "yes", "2")]
    untuned = job_dirs(study_dir / "ce_untuned")
    assert len(untuned) == 2 and all("optimizer.lr" not in overrides_of(job) for job in untuned)
    assert all(overrides_of(job)["trainer.monitor"] == "val/acc" for job in untuned)
    tuning = page_table(page, f"{TITLE}: tuning")
    for row, shown in zip(ROWS, tuning):
        results = chosen[row.name]
        assert shown["row"] == " ".join(row.fixed) and shown["trials"] == f"{TRIALS} completed"
        assert shown["chosen"] == ", ".join(f"{k}={v:.4g}" for k, v in results["best_params"].items())
        assert shown["best val/acc (%)"] == f"{-100 * results['best_value']:.2f}"
    assert tuning[0]["own space"] == "none" and tuning[1]["own space"] == "`loss.gamma=interval(0,5)`"
    text = page.read_text()
    assert f"Every tuned row had the same budget: {TRIALS} trials" in text
    assert ("losslab-train -m hydra/sweeper=optuna hydra.sweeper.n_trials=3 hydra.sweeper.n_jobs=2 "
            "hydra.sweeper.sampler.seed=0 experiment=entropy_losses_mnist loss=focal") in text
    assert "hydra.sweep.dir=OUT/tuned_tiny/focal/tune" in text
    with open(docs / study.name / "runs.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    assert {r["optimizer.lr"] for r in listed if r["multirun"] == "ce_untuned"} == {""}  # the config's own
    assert {(r["multirun"], float(r["optimizer.lr"])) for r in listed if r["multirun"] != "ce_untuned"} == {
        (name, results["best_params"]["optimizer.lr"]) for name, results in chosen.items()}
    assert {float(r["loss.gamma"]) for r in listed if r["multirun"] == "focal"} == {
        chosen["focal"]["best_params"]["loss.gamma"]}

    # the same command again trains nothing: the tunings are reused, the seed jobs skipped
    before = summary_times(study_dir)
    capsys.readouterr()
    assert main(args) == 0
    assert summary_times(study_dir) == before
    assert capsys.readouterr().out.count("already tuned, its optimization_results.yaml reused") == len(ROWS)

    # a tuning stopped before its last trial and its results: run again, it proposes the same trials and trains
    # only the missing one
    tune = study_dir / "focal" / "tune"
    names, last = [d.name for d in job_dirs(tune)], job_dirs(tune)[-1]
    for path in sorted(last.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    last.rmdir()
    (tune / "optimization_results.yaml").unlink()
    assert main(args) == 0
    assert [d.name for d in job_dirs(tune)] == names
    assert yaml.safe_load((tune / "optimization_results.yaml").read_text()) == chosen["focal"]
    after = summary_times(study_dir)
    assert {k for k in after if after[k] != before.get(k)} == {f"focal/tune/{last.name}/summary.json"}

    # rebuilt without training: the same tables
    built = page.read_text()
    assert main([study.name, "--out", str(out), "--docs", str(docs), "--from-existing"]) == 0
    assert page_table(page, f"{TITLE}: tuning") == page_table(docs / f"{study.name}.md", f"{TITLE}: tuning")
    assert re.sub(r"\d+\.\d min", "", page.read_text()) == re.sub(r"\d+\.\d min", "", built)
    assert not math.isnan(float(tuning[1]["tuning time (min)"]))


@pytest.mark.parametrize("space, words", [
    ({"loss.gamm": "interval(0,5)"}, "searches loss.gamm=interval(0,5), which its config refuses: Key 'gamm' not in "
                                     "'FocalConf'; did you mean loss.gamma?"),
    ({"loss.gamma": "2"}, "searches loss.gamma=2, one value: give a range to sample"),
    ({"loss.gamma": "interval(-1,5)"}, "searches loss.gamma=interval(-1,5), whose value -1.0 is refused: "),
])
def test_a_bad_search_space_is_one_sentence_before_anything_trains(space, words, monkeypatch, tmp_path, capsys):
    bad = tiny_study(Tuned("focal", "entropy_losses_mnist", ("loss=focal",), TUNING, space=space))
    monkeypatch.setitem(STUDIES, bad.name, bad)
    assert main([bad.name, "--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs"), *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("reproduce.py: error: the tuned row tuned_tiny/focal (")
    assert words in error
    assert not (tmp_path / "out").exists()


def test_the_tuned_rows_of_a_table_share_one_budget():
    other = Tuning(trials=TRIALS + 1, shared=TUNING.shared, seeds=TUNING.seeds, batch=TUNING.batch)
    with pytest.raises(ValueError, match="must share one Tuning"):
        Table(TITLE, (ROWS[0], Tuned("focal", "entropy_losses_mnist", ("loss=focal",), other)), ("test/acc",))
