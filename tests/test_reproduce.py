"""scripts/reproduce.py: a study runs through the sweep machinery and its page's table is the mean ± std of the
runs' summary.json files; CIFAR-10 and EMNIST studies run end to end on fixture data; missing data is one sentence."""

import csv
import json
import os
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.fixtures import patch_cifar10_md5, write_cifar10, write_emnist_letters
from study_pages.reproduce import main, portable, write_page
from study_pages.studies import STUDIES

from losslab.config import REPO_ROOT
from losslab.records.job_dirs import job_dir, job_dirs
from losslab.reporting.statistics import p_text

TINY = ["trainer.max_steps=2", "trainer.progress=log", "trainer.checkpoints=false", "seed=0"]


def page_tables(page: Path) -> dict[str, list[dict[str, str]]]:
    """Each Markdown table of a results page under its ### title, as one dict per row."""
    tables, title, lines = {}, None, page.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### "):
            title = line[4:]
        elif title and line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split(" | ")))))
            tables[title] = rows
    return tables


def summaries(sweep_dir: Path) -> list[tuple[dict[str, str], dict]]:
    """(overrides by key, summary) of every job of a sweep, read straight from the files."""
    jobs = []
    for job in job_dirs(sweep_dir):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        jobs.append((overrides, json.loads((job / "summary.json").read_text())))
    return jobs


def expected_cell(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


@pytest.fixture
def reproduce(trains):
    """scripts/reproduce.py's main: it runs a study's multiruns in this process, so it trains."""
    return main


def test_course_logistic_page_table_is_the_mean_and_std_of_the_summaries(tmp_path, reproduce, capsys):
    out, docs = tmp_path / "out", tmp_path / "docs"
    args = ["course_mnist", "--only", "logistic", "--out", str(out), "--docs", str(docs),
            "trainer.max_steps=3", "seed=0,1", "trainer.progress=log", "trainer.figures=false"]
    assert reproduce(args) == 0
    page = docs / "course_mnist.md"
    first = page.read_text()
    page.write_text(first.replace("_To be written by whoever runs the study._", "Hand-written notes."))

    # rebuilt from the sweep dir alone, then checked against an independent recomputation
    (out / "course_mnist" / "logistic" / "report.csv").unlink()
    assert reproduce(["course_mnist", "--out", str(out), "--docs", str(docs), "--from-existing"]) == 0
    rebuilt = page.read_text()
    assert "Hand-written notes." in rebuilt
    rows = page_tables(page)["Logistic regression, 2 vs 3, early stopping: shuffle vs no shuffle"]
    jobs = summaries(out / "course_mnist" / "logistic")
    assert len(jobs) == 4 and all(s["status"] == "completed" for _, s in jobs)
    assert sorted(row["trainer.shuffle"] for row in rows) == ["False", "True"]
    for row in rows:
        runs = [s for o, s in jobs if o["trainer.shuffle"] == row["trainer.shuffle"]]
        assert row["n"] == "2"
        for metric in ("val/acc", "test/acc"):
            assert row[f"{metric} (%)"] == expected_cell([s["final"][metric] for s in runs])
    shuffled = next(row for row in rows if row["trainer.shuffle"] == "True")
    assert not shuffled["test/acc (%)"].endswith("± 0.00")  # the two seeds differ: a real spread is checked
    assert "Not run yet: softmax_l2." in rebuilt
    assert "python scripts/reproduce.py course_mnist --only logistic" in rebuilt  # the command that ran
    assert "losslab-train -m experiment=tdt4265_logistic sweep=course_logistic hydra/launcher=stacked" in rebuilt

    # auditable: the commit that built the page, every run in runs.csv, and notes checked against the tables
    assert re.search(r"This page was built at commit `[0-9a-f]{12}`", rebuilt)
    with open(docs / "course_mnist" / "runs.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    assert sorted(float(r["test/acc"]) for r in listed) == sorted(s["final"]["test/acc"] for _, s in jobs)
    assert {r["trainer.shuffle"] for r in listed} == {"True", "False"} and {r["seed"] for r in listed} == {"0", "1"}
    cited = shuffled["test/acc (%)"].split(" ± ")[0]
    page.write_text(rebuilt.replace("Hand-written notes.", f"Shuffled: {cited} % on the test set.\n> The course "
                                                           "reported 97.65 % (a quoted source's number)."))
    assert reproduce(["course_mnist", "--out", str(out), "--docs", str(docs), "--from-existing"]) == 0
    stale = f"{float(cited) - 7.77:.2f}"  # a note whose number neither the page nor a run shows
    page.write_text(page.read_text().replace(f"Shuffled: {cited} %", f"Shuffled: {stale} %"))
    edited = page.read_text()
    assert reproduce(["course_mnist", "--out", str(out), "--docs", str(docs), "--from-existing"]) == 2
    assert f"cite {stale}, which the rebuilt tables no longer show" in capsys.readouterr().err
    assert page.read_text() == edited  # the page is left as it was
    page.write_text(rebuilt)

    # the same command again: every job is skipped and the table is the same
    assert reproduce(args) == 0
    assert page_tables(page) == page_tables(docs / "course_mnist.md")
    assert re.sub(r"\d+\.\d min", "", page.read_text()) == re.sub(r"\d+\.\d min", "", rebuilt)

    # trained again from scratch with the same seeds: the same numbers
    fresh_out, fresh_docs = tmp_path / "fresh_out", tmp_path / "fresh_docs"
    assert reproduce([*args[:3], "--out", str(fresh_out), "--docs", str(fresh_docs), *args[7:]]) == 0
    assert page_tables(fresh_docs / "course_mnist.md") == page_tables(page)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    """A data root with tiny CIFAR-10 (5 x 100 train / 100 test) and EMNIST letters in their real formats."""
    root = tmp_path_factory.mktemp("reproduce_data")
    cifar = write_cifar10(root, n_per_batch=100, n_test=100, seed=0)
    write_emnist_letters(root, n_train=520, n_test=130, seed=1)
    return root, cifar.md5


def run_on_fixture(reproduce, study: str, data, tmp_path, monkeypatch, *args: str, checkpoints: bool = False) -> Path:
    """The study on the fixture data; `checkpoints` keeps the final weights the weight templates are drawn from."""
    root, md5 = data
    patch_cifar10_md5(monkeypatch, md5)  # reaches the jobs: reproduce.py runs the multiruns in this process
    tiny = [o for o in TINY if not (checkpoints and o.startswith("trainer.checkpoints="))]
    assert reproduce([study, "--data-root", str(root), "--no-download", "--out", str(tmp_path / "out"),
                 "--docs", str(tmp_path / "docs"), *tiny, *args]) == 0
    return tmp_path / "docs" / f"{study}.md"


def test_cifar10_linear_end_to_end_on_fixture_data(data, tmp_path, monkeypatch, reproduce):
    # lr 0.001 only (3 of the 6 settings jobs), every job on the fixture's batch sizes of 100
    page = run_on_fixture(reproduce, "cifar10_linear", data, tmp_path, monkeypatch, "optimizer.lr=0.001",
                          "trainer.batch_size=16", "dataset.val_offset=100", "dataset.val_size=100",
                          "dataset.train_size=100", checkpoints=True)
    tables = page_tables(page)
    settings = tables["Four settings: train on data_batch_1, validate on data_batch_2"]
    assert [(r["trainer.l2"], r["original"]) for r in settings] == [
        ("0.0", "45.54 / 39.92"), ("0.1", "44.73 / 39.40"), ("1.0", "40.14 / 37.38")]
    improved = tables["Improved protocol: 49k/1k split, plateau decay, horizontal flips; CE vs MBCE"]
    assert [(r["loss"], r["original"]) for r in improved] == [("ce", "42.17 % test"), ("mbce", "41.06 % test")]
    assert all(r["n"] == "1" and re.fullmatch(r"\d+\.\d\d ± –", r["test/acc (%)"]) for r in settings + improved)
    # train on batch 1, validate on batch 2, in fixture sizes
    job = job_dir(tmp_path / "out" / "cifar10_linear" / "settings", 0)
    assert json.loads((job / "summary.json").read_text())["images"] == {"train": 100, "val": 100, "test": 100}
    text = page.read_text()
    for name in ("templates_lr0.001_l2_0", "templates_lr0.001_l2_1", "confidence_ce", "confidence_mbce"):
        assert (page.parent / "cifar10_linear" / f"{name}.png").stat().st_size > 1000
        assert f"](cifar10_linear/{name}.png)" in text
    assert text.count("in the original (") == 8  # 3 settings x train/test, CE, MBCE: each compared
    index = (page.parent / "README.md").read_text()
    assert re.search(r"cifar10_linear\.md.*\| improved protocol, CE test accuracy \d+\.\d\d ± – % \(original "
                     r"42\.17 % test\); MBCE \d+\.\d\d ± – % \(original 41\.06 % test\) \|", index)


def test_emnist_entropy_losses_end_to_end_on_fixture_data(data, tmp_path, monkeypatch, reproduce):
    # VGG-5 is slow on a CPU: the whole EMNIST table (9 jobs) and the CE row of CIFAR-10, without figures
    page = run_on_fixture(reproduce, "emnist_entropy_losses", data, tmp_path, monkeypatch, "dataset.val_size=100",
                          "trainer.batch_size=2", "trainer.eval_batch_size=2", "trainer.limit_eval_batches=1",
                          "trainer.figures=false", "--only", "emnist_ce", "emnist_entropy", "cifar10_ce")
    tables = page_tables(page)
    assert list(tables) == ["EMNIST letters, VGG-5", "CIFAR-10, VGG-5"]  # MNIST has not run: no table
    emnist = tables["EMNIST letters, VGG-5"]
    assert [(r["loss"], r["loss.coeffs"], r["loss.bases"]) for r in emnist] == [("ce", "–", "–")] + [
        (loss, coeffs, bases) for loss in ("min_ent", "mix_ent") for coeffs in ("fixed", "learnable")
        for bases in ("fixed", "learnable")]
    assert [r["original"] for r in emnist] == ["95.86 %", "95.933 %", "–", "–", "–", "95.927 %", "–", "–", "–"]
    for rows in tables.values():
        assert all(re.fullmatch(r"\d+\.\d\d ± –", r["test/acc (%)"]) and re.fullmatch(r"[\d.e-]+ ± –", r["test/ece"])
                   for r in rows)
    assert [r["loss"] for r in tables["CIFAR-10, VGG-5"]] == ["ce"]
    text = page.read_text()
    assert "Not run yet: mnist_ce, mnist_entropy." in text and "Not run yet: cifar10_entropy." in text
    assert "(not available: 0/figures/reliability_test.png was not written.)" in text  # trainer.figures=false
    images = {name: json.loads((job_dir(tmp_path / "out" / "emnist_entropy_losses" / name, 0) / "summary.json")
                               .read_text())["images"]["train"] for name in ("emnist_ce", "cifar10_ce")}
    assert images == {"emnist_ce": 420, "cifar10_ce": 400}


def test_missing_data_is_one_sentence_and_a_non_zero_exit(tmp_path, losslab):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = losslab.run(sys.executable, str(REPO_ROOT / "scripts" / "reproduce.py"), "emnist_entropy_losses",
                       "--data-root", str(tmp_path / "empty"), "--no-download", "--out", str(tmp_path / "out"),
                       "--docs", str(tmp_path / "docs"), cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 2
    error = proc.stderr.strip()
    assert "\n" not in error and error.startswith("reproduce.py: error: emnist_entropy_losses needs files")
    for needed in ("EMNIST letters (EMNIST/raw/emnist-letters-train-images-idx3-ubyte", "gzip.zip",
                   "CIFAR-10 (cifar-10-batches-py/data_batch_1", "cifar-10-python.tar.gz",
                   "MNIST (MNIST/raw/train-images-idx3-ubyte"):
        assert needed in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "docs").exists()


def test_committed_pages_match_the_studies():
    """Every study has a page and a line in the index; every page names the commit that built it and the command;
    a page that has run links its runs.csv, one row per run it aggregates; one that has not says how to run it."""
    docs = REPO_ROOT / "docs" / "results"
    index = (docs / "README.md").read_text()
    for name in STUDIES:
        page = (docs / f"{name}.md").read_text()
        assert f"]({name}.md)" in index
        assert f"python scripts/reproduce.py {name}" in page
        assert re.search(r"This page was built at commit `[0-9a-f]{12}`[;.]", page), name  # and no local changes
        if "<!-- headline: not run yet -->" in page:
            assert "**Not run yet.**" in page
            continue
        assert f"[runs.csv]({name}/runs.csv)" in page
        with open(docs / name / "runs.csv") as f:
            runs = list(csv.DictReader(f))
        finished = re.search(r"\| runs \| (\d+) finished of (\d+);", page)
        assert finished and len(runs) == int(finished[2]), name
        assert all(re.fullmatch(r"[0-9a-f]{12}", run["commit"]) for run in runs), name  # trained clean


def test_rebuilding_a_not_run_page_brings_its_commit_up_to_date_and_a_page_with_results_stays(tmp_path, capsys):
    docs, out = tmp_path / "docs", tmp_path / "out"
    docs.mkdir()
    (docs / "cifar10_linear.md").write_text("<!-- headline: not run yet -->\nThis page was built at commit `old`.\n")
    assert main(["cifar10_linear", "--from-existing", "--out", str(out), "--docs", str(docs)]) == 0
    page = (docs / "cifar10_linear.md").read_text()
    assert "**Not run yet.**" in page and "`old`" not in page
    assert re.search(r"This page was built at commit `[0-9a-f]{12}`", page)
    with_results = "<!-- headline: settings, CE test accuracy 40.00 ± 0.10 % -->\n"
    (docs / "cifar10_linear.md").write_text(with_results)
    assert main(["cifar10_linear", "--from-existing", "--out", str(out), "--docs", str(docs)]) == 2
    assert "found no sweep dir of cifar10_linear" in capsys.readouterr().err
    assert (docs / "cifar10_linear.md").read_text() == with_results


def committed_docs() -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted((REPO_ROOT / "docs").rglob("*")) if path.is_file()}


def test_a_smoke_run_writes_its_page_beside_its_sweep_dirs_and_leaves_the_committed_pages_alone(tmp_path, losslab):
    """The README's smoke run, as a user runs it (the real script, whose figure workers import it again)."""
    before = committed_docs()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = losslab.run(sys.executable, str(REPO_ROOT / "scripts" / "reproduce.py"), "course_mnist",
                       "trainer.max_steps=5", "seed=0", "--only", "logistic", "--out", str(tmp_path / "out"),
                       cwd=REPO_ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert committed_docs() == before
    assert "usage:" not in proc.stdout + proc.stderr  # the drawing workers did not run the script's main
    page = tmp_path / "out" / "course_mnist.md"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"reproduce.py: wrote {page} (a run given overrides")
    text = page.read_text()
    assert (page.parent / "course_mnist" / "logistic_curves.png").exists()
    assert "python scripts/reproduce.py course_mnist trainer.max_steps=5 seed=0 --only logistic --out OUT" in text
    assert ("losslab-train -m experiment=tdt4265_logistic sweep=course_logistic hydra/launcher=stacked "
            "hydra.sweep.dir=OUT/course_mnist/logistic trainer.max_steps=5 seed=0") in text
    assert str(tmp_path) not in text


MACHINE_PATH = re.compile(r"(/tmp|/work|/root|/home)\b|(?<![:/])//")


def test_pages_hold_no_machine_paths_and_no_double_slashes(tmp_path):
    """The committed docs, the pages of studies not run yet as the generator writes them, and commands recorded with
    absolute paths inside the repository."""
    for study in STUDIES.values():
        write_page(study, tmp_path / "out", tmp_path / "docs")
    pages = {**committed_docs(), **{p: p.read_bytes() for p in (tmp_path / "docs").glob("*.md")}}
    for path, content in pages.items():
        if path.suffix == ".md":
            for line in content.decode().splitlines():
                assert not MACHINE_PATH.search(line), f"{path}: {line}"
    recorded = f"losslab-train -m hydra.sweep.dir={REPO_ROOT}/outputs/reproduce/s/m dataset.root={REPO_ROOT}/data"
    assert portable(recorded) == "losslab-train -m hydra.sweep.dir=outputs/reproduce/s/m dataset.root=data"


def test_rebuilding_a_page_from_no_sweep_dirs_is_refused(tmp_path, capsys):
    docs = tmp_path / "docs"
    code = main(["course_mnist", "--from-existing", "--out", str(tmp_path / "out"), "--docs", str(docs)])
    assert code == 2 and "found no sweep dir of course_mnist" in capsys.readouterr().err
    assert not docs.exists()


def test_entropy_losses_mnist_page_compares_every_config_with_ce_over_matched_seeds(tmp_path, reproduce):
    out, docs = tmp_path / "out", tmp_path / "docs"
    assert reproduce(["entropy_losses_mnist", "--out", str(out), "--docs", str(docs), "trainer.max_steps=3",
                 "seed=0,1,2", "trainer.progress=log", "trainer.limit_eval_batches=2", "trainer.figures=false"]) == 0
    tables = page_tables(docs / "entropy_losses_mnist.md")
    title = "LeNet-5 on MNIST, 5 epochs, 5 seeds"
    rows, compared = tables[title], tables[f"{title}: compared with ce"]
    configs = [("ce", "0.0", "–", "–"), ("ce", "0.1", "–", "–")] + [
        (loss, "–", coeffs, bases) for loss in ("min_ent", "mix_ent") for coeffs in ("fixed", "learnable")
        for bases in ("fixed", "learnable")]
    keys = ("loss", "loss.label_smoothing", "loss.coeffs", "loss.bases")
    assert [tuple(row[k] for k in keys) for row in rows] == configs and all(row["n"] == "3" for row in rows)
    assert [tuple(row[k] for k in keys) for row in compared] == configs[1:]

    jobs = {}  # config -> {seed: (summary, calibration)}, read straight from the files
    for multirun, label in (("ce", {"loss": "ce"}), ("entropy", {})):
        for job in job_dirs(out / "entropy_losses_mnist" / multirun):
            overrides = {**label, **dict(o.split("=", 1) for o in
                                         yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))}
            config = tuple(overrides.get(k, "–") for k in keys)
            calibration = json.loads((job / "eval" / "calibration.json").read_text())
            jobs.setdefault(config, {})[overrides["seed"]] = (json.loads((job / "summary.json").read_text()),
                                                              calibration)
    assert sorted(jobs) == sorted(configs) and all(sorted(seeds) == ["0", "1", "2"] for seeds in jobs.values())
    for row in rows:
        temperatures = [c["calibration/temperature"] for _, c in jobs[tuple(row[k] for k in keys)].values()]
        assert row["calibration/temperature"].startswith(f"{statistics.mean(temperatures):.4g} ± ")

    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.weightstats import ttost_paired

    reference = jobs[configs[0]]
    for row in compared:
        own = jobs[tuple(row[k] for k in keys)]
        for metric, column, scale in (("test/acc", "test/acc (points)", 100), ("calibrated/test/ece",
                                                                                "calibrated/test/ece", 1)):
            def value(seed, runs, metric=metric):
                summary, calibration = runs[seed]
                return calibration[metric] if metric.startswith("calibrated/") else summary["final"][metric]

            seeds = ["0", "1", "2"]
            diffs = [scale * (value(s, own) - value(s, reference)) for s in seeds]
            if len(set(diffs)) > 1:
                p = stats.ttest_rel([value(s, own) for s in seeds], [value(s, reference) for s in seeds]).pvalue
                assert row[column].startswith(f"{statistics.mean(diffs):+.2g} [")
                assert f"({p_text(p)}, Holm p" in row[column]
                if p >= 0.05:  # Holm's p is at least p: equivalent within the margin by TOST, or inconclusive
                    margin = 0.002  # EQUIVALENCE_MARGINS: 0.2 accuracy points, 0.002 of ECE
                    tost = ttost_paired(np.array([value(s, own) for s in seeds]),
                                        np.array([value(s, reference) for s in seeds]), -margin, margin)[0]
                    words = (f"equivalent to ce within ±{scale * margin:.2g}{' points' if scale == 100 else ''} "
                             f"(TOST {p_text(tost)}" if tost < 0.05 else "inconclusive against ce")
                    assert words in row[column], row[column]

    test_set = {tuple(row[k] for k in keys): row for row in tables[f"{title}: the test set's variance"]}
    assert sorted(test_set) == sorted(configs)
    for config, row in test_set.items():
        found = {seed: np.load(job_of(out, config, keys, seed) / "predictions_test.npz") for seed in ("0", "1", "2")}
        widths = [summary["final"]["test/ece"] for summary, _ in jobs[config].values()]
        assert row["ECE equal-width"].startswith(f"{statistics.mean(widths):.3g} [")  # the metric's own ECE
        if config == configs[0]:
            assert row["McNemar p per seed"] == ""  # the reference itself
            continue
        ce = {seed: np.load(job_of(out, configs[0], keys, seed) / "predictions_test.npz") for seed in found}
        p_values = []
        for seed in found:
            own_right, ce_right = found[seed]["correct"].astype(bool), ce[seed]["correct"].astype(bool)
            counts = np.histogram2d(own_right, ce_right, bins=2)[0]  # [own wrong/right] x [ce wrong/right]
            p_values.append(mcnemar(counts, exact=True).pvalue)
        below = sum(p < 0.05 for p in p_values)
        assert row["McNemar p per seed"] == f"{min(p_values):.2g}–{max(p_values):.2g} ({below} of 3 below 0.05)"
    for figure in ("reliability", "learned_values"):
        assert (docs / "entropy_losses_mnist" / f"{figure}.png").exists()


def job_of(out: Path, config: tuple, keys: tuple, seed: str) -> Path:
    """The job dir of the entropy_losses_mnist run of `config` (values of `keys`, – where unset) and `seed`."""
    for multirun, label in (("ce", {"loss": "ce"}), ("entropy", {})):
        for job in job_dirs(out / "entropy_losses_mnist" / multirun):
            overrides = {**label, **dict(o.split("=", 1) for o in
                                         yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))}
            if tuple(overrides.get(k, "–") for k in keys) == config and overrides["seed"] == seed:
                return job
    raise AssertionError(f"no job of {config} seed {seed}")
