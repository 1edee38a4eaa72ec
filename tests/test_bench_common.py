"""scripts/bench_common.py: the benchmarks' quick and full sizes, and their warning on a busy machine."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bench_common
import pytest
from bench_common import busy_warning, parse_sized, warn_if_busy

CORES = 2
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.setattr(bench_common, "usable_cores", lambda: CORES)


def test_a_load_within_half_a_core_of_the_cores_is_no_warning():
    assert busy_warning("at the start", CORES - 0.5) is None
    line = busy_warning("at the start", CORES - 0.4)
    assert line.startswith("warning: ") and f"load average {CORES - 0.4:.1f} at the start" in line
    assert f"on {CORES} cores" in line


def test_the_benchmarks_own_use_is_taken_off_the_load():
    assert busy_warning("at the end", CORES + 1.0, own=1.5) is None
    line = busy_warning("at the end", CORES + 1.0, own=0.5)
    assert "of which this benchmark 0.5" in line


def run_benchmark(monkeypatch, loads: list[float], cpu_per_wall_second: float) -> list[str]:
    """The lines warn_if_busy prints around a benchmark of 10 wall seconds that used `cpu_per_wall_second` cores,
    with the load averages `loads` at its start and end."""
    readings = iter(loads)
    clock, cpu = iter([0.0, 10.0]), iter([0.0, 10.0 * cpu_per_wall_second])
    monkeypatch.setattr(bench_common.os, "getloadavg", lambda: (next(readings), 0.0, 0.0))
    monkeypatch.setattr(bench_common, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(bench_common, "cpu_seconds", lambda: next(cpu))
    printed = []
    monkeypatch.setattr("builtins.print", lambda line, **kwargs: printed.append(line))
    with warn_if_busy():
        printed.append("benchmark")
    return printed


def test_a_busy_start_warns_before_the_benchmark(monkeypatch):
    printed = run_benchmark(monkeypatch, [CORES + 1.0, CORES], cpu_per_wall_second=CORES)
    assert len(printed) == 2 and "at the start" in printed[0] and printed[1] == "benchmark"


def test_at_the_end_the_load_the_benchmark_made_itself_is_no_warning(monkeypatch):
    assert run_benchmark(monkeypatch, [0.1, CORES], cpu_per_wall_second=CORES) == ["benchmark"]
    printed = run_benchmark(monkeypatch, [0.1, CORES + 1.0], cpu_per_wall_second=CORES / 4)
    assert printed[0] == "benchmark" and "at the end" in printed[1]


def sized(monkeypatch, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int)
    parser.add_argument("--models", nargs="+")
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    return parse_sized(parser, quick={"steps": 50, "models": ["linear"]}, full={"steps": 200, "models": ["a", "b"]})


def test_the_quick_sizes_by_default_the_full_ones_with_full_and_the_command_lines_over_both(monkeypatch):
    assert (sized(monkeypatch).steps, sized(monkeypatch).models) == (50, ["linear"])
    assert (sized(monkeypatch, "--full").steps, sized(monkeypatch, "--full").models) == (200, ["a", "b"])
    assert (sized(monkeypatch, "--full", "--steps", "7").steps, sized(monkeypatch, "--steps", "7").models) == \
        (7, ["linear"])


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads a process's CPU time from /proc (Linux)")
def test_the_competing_load_computes_from_the_start_of_the_body_until_its_end():
    with bench_common.competing_load(0) as nothing:
        assert nothing is None
    with bench_common.competing_load(1) as competitor:
        started, deadline = cpu_seconds_of(competitor.pid), time.monotonic() + 60
        while cpu_seconds_of(competitor.pid) - started < 0.2:  # it computes, however busy the machine
            assert time.monotonic() < deadline, "the competing process used no CPU for a minute"
            time.sleep(0.05)
        assert competitor.poll() is None
    assert competitor.poll() is not None  # ended with the body


@pytest.mark.slow
def test_bench_stacked_step_measures_beside_the_competing_load_and_prints_samples_per_second():
    command = [sys.executable, str(SCRIPTS / "bench_stacked_step.py"), "--models", "linear", "--members", "2",
               "--steps", "3", "--repeat", "1", "--load", "1"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=SCRIPTS.parent).stdout
    assert "2 members, batch 128, MNIST shapes, SGD, fp32, " in out and "beside a competing process of 1 threads" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("linear ")]
    assert [row[1] for row in rows] == ["shared", "own"]
    for row in rows:
        stacked, per_member, in_all = float(row[2]), float(row[-2].replace(",", "")), float(row[-1].replace(",", ""))
        # the ms column is rounded to 0.01 ms and the samples/s to whole samples
        assert 128e3 / (stacked + 0.005) - 0.5 <= per_member <= 128e3 / (stacked - 0.005) + 0.5
        assert abs(in_all - 2 * per_member) <= 1.5


@pytest.mark.slow
def test_the_gpu_script_runs_its_benchmarks_and_keeps_each_output(tmp_path):
    """scripts/bench_gpu.sh on the CPU, with one step per timing and LeNet-5 only (VGG-5 takes seconds a step
    here): every benchmark it runs on a GPU runs, and its output file holds the rows the README quotes."""
    env = os.environ | {"DEVICE": "cpu", "STEPS": "--steps 1 --repeat 1", "MODELS": "lenet"}
    subprocess.run(["bash", str(SCRIPTS / "bench_gpu.sh"), str(tmp_path)], env=env, check=True, capture_output=True,
                   cwd=SCRIPTS.parent)
    for precision in ("fp32", "bf16"):
        for members in (16, 64):
            out = (tmp_path / f"stacked{members}_{precision}.txt").read_text()
            header = f"{members} members, batch 128, MNIST shapes, SGD, {precision}, "
            assert any(line.startswith(header) for line in out.splitlines())  # after a busy machine's warning
            assert [line.split()[:2] for line in out.splitlines() if line.startswith("lenet ")] == \
                [["lenet", "shared"], ["lenet", "own"]]
    loop = [line.split()[:2] for line in (tmp_path / "loop.txt").read_text().splitlines() if line.startswith("lenet")]
    assert loop == [["lenet", "fp32"], ["lenet", "tf32"], ["lenet", "bf16"]]
