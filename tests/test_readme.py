"""Every command in README.md's ```bash blocks, run as written, in README order, from a fresh working directory.

The commands are parsed from README.md itself: changing a command there changes what runs here, and a command that
no rule below covers fails its test. A newcomer's session is one fresh empty directory in which the commands run
one after the other, so `outputs/<name>/<timestamp>` in a later command is filled with the dirs the earlier ones
wrote there. The only additions are run-length overrides (`run_length`); never `hydra.run.dir`, `hydra.sweep.dir`
or `name`. Commands that need a Slurm cluster or a download run too, and must stop with the sentence README.md
documents and a non-zero exit; the machine is taken offline for them by a proxy that refuses every connection.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"
TIMEOUT = 1800  # s per command: two busy cores run a 12-job LeNet grid in minutes
RUN_LENGTH = {"trainer.max_steps": 5, "trainer.limit_eval_batches": 1}  # appended where they shorten a run
TRIALS = 2  # hydra.sweeper.n_trials, appended where a command asks for more
SMOKE = ["trainer.max_steps=5", "seed=0"]  # README: "e.g. `trainer.max_steps=5 seed=0` for a smoke run"
OFFLINE = "http://127.0.0.1:9"  # a proxy nobody listens on: every download fails at once
HAS_RESULT = {"completed", "early_stopped", "diverged"}  # losslab.records.summary.HAS_RESULT
CLUSTER_WORDS = ("srun", "slurm cluster")  # the README's sentence on the slurm launcher without a cluster


@dataclass(frozen=True)
class Line:
    """One command line of a ```bash block: its line number in README.md and its `&&`-joined commands."""

    number: int
    text: str
    steps: tuple[tuple[str, ...], ...]

    @property
    def command(self) -> str:
        """The line without its comment."""
        return " && ".join(shlex.join(step) for step in self.steps)

    def __str__(self) -> str:
        return f"README.md:{self.number}: {self.text}"


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every non-empty line in the ```bash blocks, `\\`-continued lines joined."""
    found, block, pending = [], False, None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            block = line.strip() == "```bash" and not block
            continue
        if not block or not line.strip():
            continue
        start, joined = pending or (number, "")
        joined += line.rstrip()
        pending = (start, joined[:-1]) if joined.endswith("\\") else None
        if pending is None:
            found.append((start, joined.strip()))
    return found


def steps_of(command: str) -> tuple[tuple[str, ...], ...]:
    words = shlex.split(command, comments=True)
    steps, step = [], []
    for word in [*words, "&&"]:
        if word == "&&":
            steps.append(tuple(step))
            step = []
        else:
            step.append(word)
    return tuple(steps)


def readme_lines() -> list[Line]:
    return [Line(number, text, steps_of(text)) for number, text in shell_lines(README.read_text())]


LINES = readme_lines()
# one newcomer's session runs the lines in order, and its Slurm lines share the cluster with the tests marked slurm:
# under pytest-xdist all of them run in one worker (conftest's group of the Slurm tests)
pytestmark = pytest.mark.xdist_group("slurm")


# ---------------------------------------------------------------- running commands


@dataclass
class Result:
    argv: list[str]
    cwd: Path
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        tail = "\n".join((self.out + self.err).splitlines()[-40:])
        return (f"command: {shlex.join(self.argv)}\n(in {self.cwd}, exit code {self.code} after {self.seconds:.0f} s)"
                f"\noutput tail:\n{tail}")


def newcomer_env(pythonpath: Path | None = None) -> dict[str, str]:
    """The user's environment without HYDRA_FULL_ERROR, offline, with this interpreter's bin dir first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "NO_PROXY", "no_proxy")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({key: OFFLINE for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> Result:
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return Result(argv, cwd, done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def expect(ok: object, message: str) -> None:
    """A failed check with `message` alone (the command and its output), without pytest's introspection."""
    if not ok:
        raise AssertionError(message)


def assert_ok(result: Result) -> None:
    expect(result.code == 0 and "Traceback" not in result.out + result.err, f"the command failed\n{result}")


def assert_documented_failure(result: Result, words: list[str]) -> None:
    """A non-zero exit, no traceback, and `words` (what README.md says the message holds) in stderr."""
    expect(result.code != 0, f"expected a failure\n{result}")
    expect("Traceback" not in result.out + result.err, f"a traceback instead of one sentence\n{result}")
    missing = [w for w in words if w.lower() not in result.err.lower()]
    expect(not missing, f"stderr lacks {missing}\n{result}")


def tree_digest(root: Path, skip: str | None = None) -> dict[str, str]:
    """{relative path: sha1} of every file under root (not under the subdir `skip`)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and (skip is None or p.relative_to(root).parts[0] != skip)}


# ---------------------------------------------------------------- the newcomer's session


class Newcomer:
    """One fresh working dir in which README.md's commands run in order; each line's outcome is kept."""

    def __init__(self, home: Path, scratch: Path):
        self.home, self.scratch = home, scratch
        self.env = newcomer_env()
        self.outcomes: dict[int, str | None] = {}
        self._checkout: Path | None = None
        self.docs_at_checkout: dict[str, str] = {}

    def outcome(self, line: Line) -> str | None:
        """None if `line` works as README.md says, else why not. Runs every earlier line first, once."""
        for earlier in LINES[: LINES.index(line) + 1]:
            if earlier.number not in self.outcomes:
                self.outcomes[earlier.number] = self._check(earlier)
        return self.outcomes[line.number]

    def _check(self, line: Line) -> str | None:
        try:
            for argv in line.steps:
                rule_for(argv)(self, line, list(argv))
        except AssertionError as e:
            return str(e)
        except Exception:  # a timeout, a bug here: reported on the line's test, the next lines still run
            return traceback.format_exc()
        return None

    def summaries(self) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in self.home.glob("outputs/**/summary.json")}

    def checkout(self) -> Path:
        """A copy of this checkout as `git clone` plus the uncommitted work would give it: the commands that
        start with `python scripts/...` run from a checkout, and this keeps them off the real one's docs/ and
        outputs/."""
        if self._checkout is None:
            listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                    cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
            copy = self.scratch / "checkout"
            for rel in filter(None, listed):
                if (REPO / rel).is_file():
                    (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / rel, copy / rel)
            self._checkout, self.docs_at_checkout = copy, tree_digest(copy / "docs")
        return self._checkout


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory) -> Newcomer:
    return Newcomer(tmp_path_factory.mktemp("newcomer"), tmp_path_factory.mktemp("scratch"))


# ---------------------------------------------------------------- the rules, one per kind of command


def ci_steps() -> list[tuple[tuple[str, ...], ...]]:
    """The command lines of .ci/run, each as its `&&`-joined commands."""
    lines = CI.read_text().splitlines()
    return [steps_of(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_install(session: Newcomer, line: Line, argv: list[str]) -> None:
    """Installing is CI's part: .ci/run runs this very `pip install` in a virtual environment it creates."""
    expect(any(tuple(argv) in steps for steps in ci_steps()), f"{CI} does not run `{shlex.join(argv)}` ({line})")


def check_test_command(session: Newcomer, line: Line, argv: list[str]) -> None:
    """The test suite is this run; .ci/run must run the README's line as written."""
    expect(line.steps in ci_steps(), f"{CI} does not run README.md's `{line.text}`")


def check_cluster_script(session: Newcomer, line: Line, argv: list[str]) -> None:
    """The Slurm test cluster's scripts (root, on Debian) are CI's part: .ci/run runs the line as written, without
    `sudo` (CI runs as root), on a line of its own."""
    command = tuple(argv[1:])
    expect(argv[0] == "sudo" and line.steps == (tuple(argv),), f"README.md's `{line.text}`: one `sudo bash ...` alone")
    expect((command,) in ci_steps(), f"{CI} does not run `{shlex.join(command)}` on a line of its own ({line})")


def check_print_config(session: Newcomer, line: Line, argv: list[str]) -> None:
    before = sorted(session.home.rglob("*"))
    result = run(argv, session.home, session.env)
    assert_ok(result)
    cfg = yaml.safe_load(result.out)
    keys = {"name", "seed", "dataset", "model", "loss", "optimizer", "scheduler", "trainer"}
    expect(isinstance(cfg, dict) and keys <= set(cfg), f"no composed config on stdout\n{result}")
    expect(sorted(session.home.rglob("*")) == before, "printing the config wrote files")


def composed(overrides: list[str]):
    """The config `overrides` compose to, or None where they do not (the command itself then says why)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from losslab.commands.cli import compose

    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException):
        return None


def sources_of(argv: list[str]) -> set[str]:
    """The on-disk data sources a losslab-train command reads (from its dataset= and experiment= choices)."""
    from losslab.data import TASKS

    names = []
    for word in argv:
        key, _, value = word.partition("=")
        if key == "dataset":
            names += value.split(",")
        elif key == "experiment":
            names += [cfg.dataset.name for e in value.split(",") if (cfg := composed([f"experiment={e}"]))]
    return {TASKS[name][0] for name in names or [composed([]).dataset.name] if name in TASKS}


def missing_sources(argv: list[str]) -> dict[str, list[Path]]:
    """{source: its missing files} under the data root a user without `dataset.root` gets."""
    from losslab.config import data_root
    from losslab.data.sources import READERS

    root = data_root(None)
    missing = {s: [root / f for f in READERS[s][1] if not (root / f).exists() and not (root / f"{f}.gz").exists()]
               for s in sources_of(argv) if s in READERS}
    return {source: files for source, files in missing.items() if files}


def is_sweep_value(word: str) -> bool:
    return "," in re.sub(r"\[.*?\]", "", word.partition("=")[2])


def run_length(argv: list[str]) -> list[str]:
    """The run-length overrides appended to a losslab-train command: only those that make its runs shorter."""
    chosen = [w for w in argv if re.match(r"(trainer|experiment|sweep)[.=]", w) and not is_sweep_value(w)]
    cfg = composed(chosen)
    trainer = cfg.trainer if cfg is not None else dict.fromkeys(name.split(".")[1] for name in RUN_LENGTH)
    extra = [f"{key}={limit}" for key, limit in RUN_LENGTH.items()
             if trainer[key.split(".")[1]] is None or trainer[key.split(".")[1]] > limit]
    trials = [int(w.partition("=")[2]) for w in argv if w.startswith("hydra.sweeper.n_trials=")]
    return extra + ([f"hydra.sweeper.n_trials={TRIALS}"] if trials and trials[-1] > TRIALS else [])


def submits_to_slurm(argv: list[str]) -> bool:
    """hydra/launcher=slurm, or hydra/launcher=stacked with its Slurm executor."""
    return "hydra/launcher=slurm" in argv or "hydra.launcher.executor=submitit_slurm" in argv


def check_train(session: Newcomer, line: Line, argv: list[str]) -> None:
    before = session.summaries()
    result = run(argv + run_length(argv), session.home, session.env)
    if submits_to_slurm(argv) and shutil.which("srun") is None:
        missing = [w for w in CLUSTER_WORDS if w.lower() not in README.read_text().lower()]
        expect(not missing, f"README.md does not say what happens without a Slurm cluster ({missing})")
        assert_documented_failure(result, list(CLUSTER_WORDS))
        return
    missing = missing_sources(argv)
    if missing:
        # README.md: "offline, the error names the missing files and where they go"
        folders = sorted({str(f.parent) for files in missing.values() for f in files})
        stems = ["-".join(os.path.commonprefix([f.name.split("-") for f in files])) for files in missing.values()]
        assert_documented_failure(result, folders + [stem for stem in stems if stem])
        return
    assert_ok(result)
    new = {p for p, mtime in session.summaries().items() if before.get(p) != mtime}
    expect(new, f"no run wrote a summary.json under {session.home / 'outputs'}\n{result}")
    statuses = {str(p.parent.relative_to(session.home)): json.loads(p.read_text())["status"] for p in new}
    expect(set(statuses.values()) <= HAS_RESULT, f"runs without a result: {statuses}\n{result}")


def result_dirs(home: Path, pattern: str) -> list[Path]:
    """The dirs matching `pattern`'s placeholders that hold results: runs with a summary.json, sweeps with jobs that
    have one (a sweep stopped before its first job, such as the slurm launcher's without a cluster, has none)."""
    glob = re.sub(r"<[^>]+>", "*", pattern)
    return sorted(p for p in home.glob(glob) if (p / "summary.json").is_file() or any(p.glob("*/summary.json")))


def filled(session: Newcomer, argv: list[str]) -> list[tuple[Path, list[str]]]:
    """(dir, argv) for every dir the earlier commands wrote that fills argv's `<placeholder>` word."""
    [at] = [i for i, word in enumerate(argv) if "<" in word]
    dirs = result_dirs(session.home, argv[at])
    expect(dirs, f"no dir that the earlier README commands wrote matches {argv[at]} (in {session.home})")
    return [(d, [*argv[:at], str(d.relative_to(session.home)), *argv[at + 1:]]) for d in dirs]


def check_report(session: Newcomer, line: Line, argv: list[str]) -> None:
    """`losslab-report <sweep dir>`: the table and plots again, for every sweep the README's commands ran."""
    for sweep_dir, command in filled(session, argv):
        written = {p: p.stat().st_mtime_ns for p in [*sweep_dir.glob("report.*"), *sweep_dir.glob("*.png")]}
        result = run(command, session.home, session.env)
        assert_ok(result)
        for name in ("report.md", "report.csv"):
            path = sweep_dir / name
            expect(path.is_file() and path.stat().st_mtime_ns != written.get(path), f"{path} not written\n{result}")
        plots = [p for p in sweep_dir.glob("*.png") if p.stat().st_mtime_ns != written.get(p)]
        expect(plots, f"no plot written in {sweep_dir}\n{result}")


def check_eval(session: Newcomer, line: Line, argv: list[str]) -> None:
    """`losslab-eval <run dir> split=...`: every metric again under <run dir>/eval/, the training results untouched."""
    if "--calibrate" in argv:
        return check_calibrate(session, line, argv)
    split = dict(w.split("=", 1) for w in argv if "=" in w).get("split", "test")
    for run_dir, command in filled(session, argv):
        training = tree_digest(run_dir, skip="eval")
        result = run(command, session.home, session.env)
        assert_ok(result)
        expect(tree_digest(run_dir, skip="eval") == training, f"the training results in {run_dir} changed\n{result}")
        evaluated = json.loads((run_dir / "eval" / f"{split}.json").read_text())
        final = json.loads((run_dir / "summary.json").read_text())["final"]
        metrics = [key for key in final if key.startswith(f"{split}/")]
        differ = {key: (evaluated.get(key), final[key]) for key in metrics
                  if evaluated.get(key) is None or abs(evaluated[key] - final[key]) > 1e-6 * max(1, abs(final[key]))}
        expect(metrics and not differ, f"{run_dir}/eval/{split}.json does not reproduce the run's final "
                                       f"{split} metrics {metrics}: (eval, run) {differ}\n{result}")


def check_calibrate(session: Newcomer, line: Line, argv: list[str]) -> None:
    """`losslab-eval <run dir> --calibrate`: a temperature and the metrics before and after it in
    <run dir>/eval/calibration.json, the same predictions, a val NLL no higher, the run's own final test metrics as
    the ones before; a run whose validation split comes from its test set stops with README.md's sentence."""
    for run_dir, command in filled(session, argv):
        training = tree_digest(run_dir, skip="eval")
        result = run(command, session.home, session.env)
        expect(tree_digest(run_dir, skip="eval") == training, f"the training results in {run_dir} changed\n{result}")
        if yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["dataset"]["val_from"] == "test":
            expect("dataset.val_from=test" in README.read_text(), "README.md does not say which runs are refused")
            assert_documented_failure(result, ["dataset.val_from=test"])
            continue
        assert_ok(result)
        calibration = json.loads((run_dir / "eval" / "calibration.json").read_text())
        final = json.loads((run_dir / "summary.json").read_text())["final"]
        before = {key: final[key] for key in ("val/nll", "test/acc", "test/nll", "test/ece", "test/brier")}
        differ = {key: (calibration[key], value) for key, value in before.items()
                  if abs(calibration[key] - value) > 1e-6 * max(1, abs(value))}
        expect(not differ, f"calibration.json's metrics before T are not the run's (calibration, run): {differ}")
        expect(calibration["calibration/temperature"] > 0 and all(
            math.isfinite(calibration[f"calibrated/{key}"]) for key in before), f"no finite result\n{result}")
        expect(calibration["calibrated/test/acc"] == calibration["test/acc"], f"T changed the accuracy\n{result}")
        expect(calibration["calibrated/val/nll"] <= calibration["val/nll"], f"T raised the val NLL\n{result}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_runs(port: int) -> list[str] | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/data/runs", timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        return None


def check_tensorboard(session: Newcomer, line: Line, argv: list[str]) -> None:
    """`tensorboard --logdir outputs` on a free loopback port serves every run the earlier commands logged."""
    logdir = session.home / argv[argv.index("--logdir") + 1]
    runs = sorted({str(p.parent.relative_to(logdir)) for p in logdir.rglob("events.out.tfevents.*")})
    expect(runs, f"the README's commands logged no TensorBoard runs under {logdir}")
    port = free_port()
    command = [*argv, "--host", "127.0.0.1", "--port", str(port)]
    with open(session.scratch / "tensorboard.log", "w+") as log:
        server = subprocess.Popen(command, cwd=session.home, env=session.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            served, deadline = None, time.monotonic() + 300
            while server.poll() is None and time.monotonic() < deadline:  # until it lists them all (it loads lazily)
                served = served_runs(port)
                if served is not None and set(runs) <= set(served):
                    break
                time.sleep(1)
        finally:
            server.terminate()
            server.wait(timeout=60)
        log.seek(0)
        output = log.read()
    missing = sorted(set(runs) - set(served or []))
    expect(served is not None and not missing,
           f"`{shlex.join(command)}` did not serve {missing or 'anything'}; it served {served}\n{output[-3000:]}")


def check_reproduce(session: Newcomer, line: Line, argv: list[str]) -> None:
    """`python scripts/reproduce.py <study>` (as a smoke run) and `--from-existing`, from a checkout: the results go
    under its outputs/, and the committed pages under docs/ are not rewritten with smoke numbers."""
    checkout = session.checkout()
    env = newcomer_env(pythonpath=checkout / "src")  # the checkout's losslab, as an editable install of it would be
    from_existing = "--from-existing" in argv
    trained = {p: p.stat().st_mtime_ns for p in checkout.glob("outputs/**/summary.json")}
    result = run(argv + SMOKE, checkout, env)  # --from-existing then rebuilds the smoke run's page
    assert_ok(result)
    expect("usage:" not in result.out + result.err, f"the script printed its usage\n{result}")
    changed = sorted(k for k, v in tree_digest(checkout / "docs").items() if session.docs_at_checkout.get(k) != v)
    expect(not changed, f"the committed docs/ changed: {changed}\n{result}")
    if from_existing:
        now = {p: p.stat().st_mtime_ns for p in checkout.glob("outputs/**/summary.json")}
        expect(now == trained, f"--from-existing trained\n{result}")
    else:
        expect(len(trained) < len(list(checkout.glob("outputs/**/summary.json"))), f"no run\n{result}")


RULES = [  # (what a command starts with, how it is checked); the first match applies
    (("pip", "install"), check_install),
    (("python", "-m", "pytest"), check_test_command),
    (("sudo", "bash", "scripts/slurm/start-test-cluster.sh"), check_cluster_script),
    (("sudo", "bash", "scripts/slurm/stop-test-cluster.sh"), check_cluster_script),
    (("losslab-train", "--cfg"), check_print_config),
    (("losslab-train",), check_train),
    (("losslab-report",), check_report),
    (("losslab-eval",), check_eval),
    (("tensorboard", "--logdir"), check_tensorboard),
    (("python", "scripts/reproduce.py"), check_reproduce),
]


def rule_for(argv: tuple[str, ...]):
    for start, check in RULES:
        if argv[: len(start)] == start:
            return check
    raise AssertionError(f"no rule in {Path(__file__).name} covers the README command `{shlex.join(argv)}`; "
                         f"add one that runs it")


# ---------------------------------------------------------------- tests


def test_readme_shows_commands_and_every_one_has_a_rule():
    assert len(LINES) >= 10, f"found only {len(LINES)} command lines in README.md's ```bash blocks"
    uncovered = []
    for line in LINES:
        for argv in line.steps:
            try:
                rule_for(argv)
            except AssertionError as e:
                uncovered.append(f"{line}: {e}")
    assert not uncovered, "\n".join(uncovered)


@pytest.mark.parametrize("line", LINES, ids=[f"{line.number}:{line.command}" for line in LINES])
def test_readme_command_works_as_written(newcomer, line):
    failure = newcomer.outcome(line)
    if failure is not None:
        pytest.fail(f"{line}\n{failure}", pytrace=False)


def test_the_readme_tables_list_every_option_of_every_config_group():
    """The `group | options` table names each group's options exactly as conf/<group>/ holds them."""
    rows = {match[1]: set(re.findall(r"`([a-z0-9_]+)`", match[2]))
            for match in re.finditer(r"^\| `([a-z/_]+)` \| (.*) \|$", README.read_text(), re.M)}
    groups = sorted(d.name for d in (REPO / "conf").iterdir() if d.is_dir() and d.name != "hydra")
    assert {group: rows.get(group) for group in groups} == \
        {group: {f.stem for f in (REPO / "conf" / group).glob("*.yaml")} for group in groups}
