"""The package's structure holds: the layering contract in pyproject.toml (import-linter), no import cycle between
modules, and no module over MAX_LINES lines."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400


def test_the_layering_contract_is_kept(losslab):
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = losslab.run(lint_imports, "--no-cache", cwd=SRC.parent, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("losslab", cache_dir=None)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "\n".join(sorted(cycles))


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {str(path.relative_to(SRC)): n for path in SRC.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
