"""scripts/bench_common.py: the benchmarks' quick and full sizes, and their warning on a busy machine."""

import argparse
import sys
from types import SimpleNamespace

import bench_common
import pytest
from bench_common import busy_warning, parse_sized, warn_if_busy

CORES = 2


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
