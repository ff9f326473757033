"""Student copies of the chapters: each solution cell replaced by an empty cell to write in, outputs cleared.

Usage: python tools/make_student.py [--out _student] [chapters/*.ipynb ...]

The "solution" cell tag is the single source of truth: a cell is a solution if and only if its tags
include it. Before writing anything the script checks every chapter for a solution that later cells
depend on (a name that only a solution cell defines, used by a cell that stays in the student copy):
such a copy would break for the student after the exercise, so the script refuses and names the cell.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

SOLUTION_TAG = "solution"
PLACEHOLDER = "# Your solution to the exercise above."
NOTE = (
    "```{note}\nThis is the **student copy** of the chapter: the solutions to the exercises are removed and "
    "each is replaced by an empty cell for yours. Outputs are cleared; run the cells in order.\n```"
)
EXERCISE = re.compile(r"\{admonition\}\s*Exercise|^#+\s*Exercises", re.MULTILINE)  # a box, or a section of them


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def student_copy(nb):
    """A copy of notebook ``nb`` with every solution cell replaced by an empty code cell (tagged "exercise"),
    a note under the title, and no outputs."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if is_solution(cell):
            cells.append(new_code_cell(PLACEHOLDER, metadata={"tags": ["exercise"]}))
            continue
        cell = copy.deepcopy(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        cells.append(cell)
    title = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
    cells.insert(title + 1, new_markdown_cell(NOTE))
    out.cells = cells
    return out


def _parse(source: str) -> ast.Module | None:
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _names(source: str) -> tuple[set[str], set[str], set[str]]:
    """Names a cell binds (assignments, defs, imports, loop targets), its functions' parameters (local to the cell),
    and the names it reads, anywhere in it."""
    tree = _parse(source)
    if tree is None:
        return set(), set(), set()
    defined, params, used = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            params.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    return defined, params, used


def solution_leaks(nb) -> list[tuple[int, str]]:
    """(cell index, name) for each name that a kept cell reads although only solution cells above it define it:
    the places where the student copy would raise NameError. Names the cell defines itself do not count."""
    by_kept, by_solution, leaks = set(dir(builtins)), set(), []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        defined, params, used = _names(cell.source)
        if is_solution(cell):
            by_solution |= defined
            continue
        leaks += [(i, name) for name in sorted(used - defined - params - by_kept) if name in by_solution]
        by_kept |= defined
    return leaks


def up_to_first_exercise(nb):
    """The cells before the first exercise (a markdown cell with an Exercise box or an Exercises heading)."""
    out = copy.deepcopy(nb)
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and EXERCISE.search(c.source)), len(nb.cells))
    out.cells = out.cells[:first]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="chapter notebooks (default: chapters/*.ipynb)")
    parser.add_argument("--out", default="_student", help="output folder; copies go to OUT/chapters/ (default: _student)")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(Path("chapters").glob("*.ipynb"))
    if not paths:
        print("no notebooks found: run from the repository root or name them", file=sys.stderr)
        return 2
    books = {p: nbformat.read(p, as_version=4) for p in paths}
    problems = [f"{p}: cell {i} uses {name!r}, which only a solution defines" for p, nb in books.items() for i, name in solution_leaks(nb)]
    if problems:
        print("student copies would break; define these outside the solutions:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    out_dir = Path(args.out) / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    for p, nb in books.items():
        student = student_copy(nb)
        nbformat.write(student, out_dir / p.name)
        print(f"{out_dir / p.name}: {sum(map(is_solution, nb.cells))} solutions removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
