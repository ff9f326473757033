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
    for cell in out.cells:
        if is_solution(cell):
            cells.append(new_code_cell(PLACEHOLDER, metadata={"tags": ["exercise"]}))
            continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        cells.append(cell)
    title = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
    cells.insert(title + 1, new_markdown_cell(NOTE))
    out.cells = cells
    return out


def _parse(source: str) -> ast.Module:
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    return ast.parse("\n".join(lines))  # a SyntaxError is the caller's to report


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _bound_here(node: ast.AST) -> set[str]:
    """Names bound in ``node``'s own scope (not in the functions, classes and comprehensions nested in it)."""
    names: set[str] = set()

    def visit(n: ast.AST, top: bool) -> None:
        if not top and isinstance(n, _SCOPES):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)  # the definition binds its name here; its body is another scope
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        for child in ast.iter_child_nodes(n):
            visit(child, False)

    visit(node, True)
    return names


def _free_reads(node: ast.AST) -> set[str]:
    """Names ``node`` reads from the enclosing (cell-level) scope: loads, minus what a nested function, lambda or
    comprehension binds for itself. An augmented assignment ``x += 1`` reads x."""
    if isinstance(node, _SCOPES):
        inner = set().union(*(_free_reads(c) for c in ast.iter_child_nodes(node)))
        own = _bound_here(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.discard(node.name)
        return inner - own
    reads = {node.id} if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) else set()
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        reads.add(node.target.id)
    return reads.union(*(_free_reads(c) for c in ast.iter_child_nodes(node)))


def _run(stmts: list[ast.stmt], cell: int, kept: set[str], solution: set[str], leaks: list[tuple[int, str]]) -> None:
    """Walk a kept cell's statements in execution order (a loop or an except clause binds before its body reads),
    recording reads of names only a solution defined and adding the cell's own bindings to ``kept``."""

    def read(node: ast.AST) -> None:
        leaks.extend((cell, n) for n in sorted(_free_reads(node) - kept) if n in solution and (cell, n) not in leaks)

    def bind(node: ast.AST) -> None:
        kept.update(_bound_here(ast.Module(body=[node], type_ignores=[])) if isinstance(node, ast.stmt) else _bound_here(node))

    for st in stmts:
        if isinstance(st, (ast.For, ast.AsyncFor)):
            read(st.iter)
            bind(st.target)
            _run(st.body + st.orelse, cell, kept, solution, leaks)
        elif isinstance(st, (ast.With, ast.AsyncWith)):
            for item in st.items:
                read(item.context_expr)
                if item.optional_vars is not None:
                    bind(item.optional_vars)
            _run(st.body, cell, kept, solution, leaks)
        elif isinstance(st, ast.Try):
            _run(st.body, cell, kept, solution, leaks)
            for h in st.handlers:
                if h.type is not None:
                    read(h.type)
                if h.name:
                    kept.add(h.name)
                _run(h.body, cell, kept, solution, leaks)
            _run(st.orelse + st.finalbody, cell, kept, solution, leaks)
        elif isinstance(st, (ast.If, ast.While)):
            read(st.test)
            _run(st.body + st.orelse, cell, kept, solution, leaks)
        else:
            read(st)
            bind(st)  # a def binds its name, not its locals


def solution_leaks(nb) -> list[tuple[int, str]]:
    """(cell index, name) for each name that a kept cell reads, statement by statement in order, although at that
    point only a solution cell above has defined it: where the student copy would raise NameError. Approximate in
    one direction only: a name read inside a function counts as read where the function is defined, and a solution
    that changes an object other cells use (retraining a model, say) is not seen. A cell that does not parse
    raises SyntaxError."""
    by_kept, by_solution, leaks = set(dir(builtins)), set(), []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = _parse(cell.source)
        except SyntaxError as exc:
            raise SyntaxError(f"cell {i} does not parse, so its names cannot be checked: {exc}") from None
        if is_solution(cell):
            by_solution |= _bound_here(tree)
            continue
        _run(tree.body, i, by_kept, by_solution, leaks)
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
    problems = []
    for p, nb in books.items():
        try:
            problems += [f"{p}: cell {i} uses {name!r}, which only a solution defines" for i, name in solution_leaks(nb)]
        except SyntaxError as exc:
            problems.append(f"{p}: {exc}")
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
