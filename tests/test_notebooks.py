"""The chapters as pages: code a reader can read without scrolling sideways, formatted by one
formatter, plumbing folded away but claims in view, and the parameters every chapter takes."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
MAX_LINE = 88  # what the page shows without a horizontal scroll bar
# the formatter `make format` runs; --unstable is the style that also splits long strings
BLACK = [sys.executable, "-m", "black", "--unstable", "--line-length", str(MAX_LINE)]


def code_cells(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def tags(cell):
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[nb.stem for nb in CHAPTERS])
def test_code_lines_fit_the_page(notebook):
    long = [(i, line) for i, cell in enumerate(code_cells(notebook))
            for line in "".join(cell["source"]).splitlines() if len(line) > MAX_LINE]
    assert not long, f"{notebook.name}: code lines over {MAX_LINE} characters: {long}"


def test_chapters_are_formatted():
    result = subprocess.run([*BLACK, "--check", "--quiet", *map(str, CHAPTERS)], capture_output=True, text=True)
    assert result.returncode == 0, f"run `make format`:\n{result.stderr}"


def test_line_check_catches_a_long_line(tmp_path):
    """The two checks above can fail."""
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["x = " + " + ".join(["1"] * 40) + "\n"]}
    notebook = tmp_path / "long.ipynb"
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(AssertionError, match="over 88"):
        test_code_lines_fit_the_page(notebook)
    assert subprocess.run([*BLACK, "--check", "--quiet", str(notebook)]).returncode == 1


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[nb.stem for nb in CHAPTERS])
def test_claims_stay_visible(notebook):
    """hide-input folds plumbing (plots, tables); a cell that asserts stays in view."""
    for cell in code_cells(notebook):
        source = "".join(cell["source"])
        if "hide-input" in tags(cell) or "hide-cell" in tags(cell):
            assert "assert " not in source, f"{notebook.name}: a cell with assertions is hidden:\n{source[:200]}"


@pytest.mark.parametrize("notebook", [nb for nb in CHAPTERS if nb.stem != "00_introduction"],
                         ids=[nb.stem for nb in CHAPTERS if nb.stem != "00_introduction"])
def test_parameters_cell(notebook):
    """The template's parameters cell: SCALE, SEED and SEEDS, tagged for papermill."""
    cells = [c for c in code_cells(notebook) if "parameters" in tags(c)]
    assert len(cells) == 1, f"{notebook.name}: one cell tagged 'parameters' expected, found {len(cells)}"
    names = {t.id for node in ast.parse("".join(cells[0]["source"])).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    assert {"SCALE", "SEED", "SEEDS"} <= names, f"{notebook.name}: the parameters cell defines {sorted(names)}"
    seeds = next(node.value for node in ast.parse("".join(cells[0]["source"])).body
                 if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SEEDS" for t in node.targets))
    # one seed by default: the spread over more seeds is measured with `make spread` and stated
    assert isinstance(seeds, ast.Constant) and seeds.value == 1, f"{notebook.name}: SEEDS should default to 1"
