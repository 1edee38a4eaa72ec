"""losslab-gradcheck passes, fails on a wrong hand-derived gradient, and runs as a console script."""

import shutil
import sys
from pathlib import Path

import pytest

from losslab.commands import gradcheck

LOSS_NAMES = ("ce", "bce", "mbce", "min_ent", "mix_ent", "focal", "gce", "sce", "mae", "confidence_penalty")


def table_rows(text):
    """{(loss, parameter): status} from the printed table."""
    rows = {}
    for line in text.splitlines()[1:]:
        if "  " not in line:
            break
        cells = [c for c in line.split("  ") if c.strip()]
        rows[cells[0].strip(), cells[1].strip()] = cells[-1].strip()
    return rows


def test_gradcheck_passes_in_process(capsys):
    assert gradcheck.main(["--seed", "1"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(rows.values()) == {"ok"}
    assert {loss.split()[0] for loss, _ in rows} == set(LOSS_NAMES)
    for name in ("ce", "bce", "mbce"):
        assert {(name, "logits"), (f"{name} linear + l2", "W"), (f"{name} linear + l2", "b")} <= set(rows)
    for name in ("min_ent", "mix_ent"):
        assert (f"{name} coeffs=learnable bases=learnable", "theta") in rows
        assert (f"{name} coeffs=learnable bases=learnable", "phi") in rows


def test_every_pair_is_within_tolerance():
    for row in gradcheck.run(seed=2):
        assert row.autograd_vs_fd < gradcheck.FD_TOL, row
        if row.analytic_vs_autograd is not None:
            assert row.analytic_vs_autograd < gradcheck.ANALYTIC_TOL, row
            assert row.analytic_vs_fd < gradcheck.FD_TOL, row


def test_a_wrong_analytic_gradient_fails_and_is_named(monkeypatch, capsys):
    correct = gradcheck.ANALYTIC["mbce"]
    # the classic slip: forgetting the 1/K of the per-class mean
    monkeypatch.setitem(gradcheck.ANALYTIC, "mbce", lambda z, y: correct(z, y) * z.shape[-1])
    assert gradcheck.main([]) != 0
    rows = table_rows(capsys.readouterr().out)
    failed = {key for key, status in rows.items() if status == "FAIL"}
    assert failed and all(loss.startswith("mbce") for loss, _ in failed)
    assert ("mbce linear", "W") in failed


def test_a_slightly_wrong_l2_gradient_fails(monkeypatch):
    monkeypatch.setattr(
        gradcheck, "linear_gradients", lambda x, w, dz, l2: (dz.T @ x + 2.0000001 * l2 * w, dz.sum(0))
    )
    failed = {(r.loss, r.parameter) for r in gradcheck.run() if not r.ok}
    assert failed == {(f"{name} linear + l2", "W") for name in ("ce", "bce", "mbce")}


def test_console_script(tmp_path, losslab):
    script = shutil.which("losslab-gradcheck") or str(Path(sys.executable).parent / "losslab-gradcheck")
    if not Path(script).exists():
        pytest.fail("losslab-gradcheck is not installed; run `pip install -e .`")
    done = losslab.run(script, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    losses = {loss.split()[0] for loss, _ in table_rows(done.stdout)}
    assert losses == set(LOSS_NAMES)
