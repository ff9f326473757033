"""Student and autograder copies of the chapters, from the chapters as written.

Usage: python tools/make_student.py [--out _student] [--no-autograder] [chapters/*.ipynb ...]

Two cell tags are the single source of truth. A cell tagged "solution" is an exploration exercise's answer: the
student copy replaces it with an empty cell. A cell tagged "solution" and "graded" defines a graded exercise's
function (``genbook.exercises`` holds its checks): the student copy keeps the cell's imports and the function's
signature and docstring, and replaces the function's body with ``...``.

The copies are made by otter-grader's ``otter assign``, from an Otter master notebook this script builds:
  OUT/chapters/NAME.ipynb      the student copy (outputs cleared; every cell but the graded ones tagged otter_ignore)
  OUT/autograder/NAME.zip      the autograder (``make grade`` or ``otter run -a OUT/autograder/NAME.zip ...``)
  OUT/autograder/NAME.ipynb    the same notebook with the reference solutions (it gets full marks)
The autograder runs a submission's graded cells only (Otter skips cells tagged otter_ignore), so grading never
retrains a chapter's models, and calls each case of ``genbook.exercises`` on the student's function.

Before writing anything the script checks every chapter for a solution that later cells depend on (a name that only
a solution cell defines, used by a cell that stays in the student copy): such a copy would break for the student
after the exercise, so the script refuses and names the cell. Otter has no such check.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_raw_cell

SOLUTION_TAG = "solution"
GRADED_TAG = "graded"
IGNORE_TAG = "otter_ignore"
PLACEHOLDER = "# Your solution to the exercise above."
NOTE = (
    "```{note}\nThis is the **student copy** of the chapter: the solutions to the exercises are removed and "
    "each is replaced by an empty cell for yours. The graded exercises at the end keep their function's signature: "
    "write its body, keep its imports in its cell, and run the check cell under it. Outputs are cleared; run the "
    "cells in order.\n```"
)
EXERCISE = re.compile(r"\{admonition\}\s*Exercise|^#+\s*Exercises", re.MULTILINE)  # a box, or a section of them


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def is_graded(cell) -> bool:
    """A graded exercise's cell: the student copy keeps its imports and its functions' signatures."""
    return is_solution(cell) and GRADED_TAG in cell.get("metadata", {}).get("tags", [])


def student_copy(nb):
    """A copy of notebook ``nb`` with every solution cell replaced by an empty code cell (tagged "exercise"),
    a note under the title, and no outputs."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        if is_solution(cell) and not is_graded(cell):
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


OTTER_CONFIG = """# ASSIGNMENT CONFIG
name: {name}
run_tests: false
init_cell: false
check_all_cell: false
export_cell: false
generate: true
tests:
  files: false
  ok_format: false
"""
CHECK_CELL = re.compile(r'^grader\.check\("[^"]*"\)\s*$')  # otter's own check cells: the chapters have theirs


def mark_bodies(source: str) -> str:
    """``source`` with the body of each top-level function (after its docstring) between ``# BEGIN SOLUTION`` and
    ``# END SOLUTION``, the markers otter assign replaces with ``...`` in the student copy."""
    tree = ast.parse(source)
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not funcs:
        raise ValueError("a graded cell must define its exercise's function")
    lines = source.split("\n")
    for f in reversed(funcs):  # from the bottom, so that earlier line numbers stay valid
        doc = f.body[0] if isinstance(f.body[0], ast.Expr) and isinstance(getattr(f.body[0], "value", None), ast.Constant) else None
        rest = f.body[1:] if doc is not None and isinstance(doc.value.value, str) else f.body
        if not rest:
            raise ValueError(f"{f.name} has no body to hide after its docstring")
        indent = " " * rest[0].col_offset
        start = doc.end_lineno if doc is not None and rest is not f.body else rest[0].lineno - 1  # 0-based first body line
        lines[f.end_lineno : f.end_lineno] = [indent + "# END SOLUTION"]
        lines[start:start] = [indent + "# BEGIN SOLUTION"]
    return "\n".join(lines)


def _test_cell(function: str, case) -> str:
    slug = re.sub(r"\W+", "_", case.name).strip("_").lower()
    return (
        f'""" # BEGIN TEST CONFIG\npoints: {case.points}\nhidden: {str(case.hidden).lower()}\n""" # END TEST CONFIG\n'
        f"def test_{slug}({function}):\n"
        "    from genbook import exercises\n\n"
        f"    exercises.run_case({function!r}, {case.name!r}, {function})\n"
    )


def otter_master(nb, name: str):
    """The Otter Assign master notebook of a student copy ``nb`` (graded cells still holding their solutions): each
    graded cell becomes a question (the markdown cell above it is its prompt) whose tests are the cases of its
    exercise in ``genbook.exercises``; every other code cell is tagged otter_ignore, so grading runs no training."""
    from genbook import exercises

    cells = [new_raw_cell(OTTER_CONFIG.format(name=name))]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not is_graded(cell):
            cell = copy.deepcopy(cell)
            if cell.cell_type == "code":
                cell.metadata["tags"] = [*cell.metadata.get("tags", []), IGNORE_TAG]
            cells.append(cell)
            continue
        defined = [n.name for n in _parse(cell.source).body if isinstance(n, ast.FunctionDef)]
        found = [exercises.EXERCISES[n] for n in defined if n in exercises.EXERCISES]
        if len(found) != 1:
            raise ValueError(f"{name}: graded cell {i} must define exactly one function of genbook.exercises; it defines {defined}")
        ex = found[0]
        prompt = [cells.pop()] if cells[-1].cell_type == "markdown" else []
        tags = [t for t in cell.metadata.get("tags", []) if t != "hide-cell"]
        cells += [new_raw_cell(f"# BEGIN QUESTION\nname: {ex.question}"), *prompt, new_raw_cell("# BEGIN SOLUTION")]
        cells += [new_code_cell(mark_bodies(cell.source), metadata={"tags": tags}), new_raw_cell("# END SOLUTION")]
        cells += [new_raw_cell("# BEGIN TESTS"), *(new_code_cell(_test_cell(ex.function, c)) for c in ex.cases)]
        cells += [new_raw_cell("# END TESTS"), new_raw_cell("# END QUESTION")]
    out = copy.deepcopy(nb)
    out.cells = cells
    return out


def assign(nb, name: str, out: Path) -> dict[str, Path]:
    """Run otter assign on ``nb``'s master notebook; write the student copy to out/chapters/NAME.ipynb and the
    autograder to out/autograder/NAME.zip (and NAME.ipynb, the notebook with the reference solutions)."""
    with tempfile.TemporaryDirectory() as tmp:
        master, dist = Path(tmp) / f"{name}.ipynb", Path(tmp) / "dist"
        nbformat.write(otter_master(nb, name), master)
        run = subprocess.run([sys.executable, "-m", "otter", "assign", str(master), str(dist)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"otter assign failed on {name}:\n{run.stdout}\n{run.stderr}")
        student = nbformat.read(dist / "student" / f"{name}.ipynb", as_version=4)
        student.cells = [c for c in student.cells if not (c.cell_type == "code" and CHECK_CELL.match(c.source))]
        for c in student.cells:
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
        paths = {"student": out / "chapters" / f"{name}.ipynb", "zip": out / "autograder" / f"{name}.zip"}
        paths["solutions"] = out / "autograder" / f"{name}.ipynb"
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student, paths["student"])
        (zipped,) = (dist / "autograder").glob("*.zip")
        shutil.copyfile(zipped, paths["zip"])
        shutil.copyfile(dist / "autograder" / f"{name}.ipynb", paths["solutions"])
    return paths


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
        if is_solution(cell) and not is_graded(cell):  # a graded cell keeps its imports and def lines
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
    parser.add_argument("--out", default="_student", help="output folder: OUT/chapters/ and OUT/autograder/ (default: _student)")
    parser.add_argument("--no-autograder", action="store_true", help="student copies only, without otter (graded cells kept whole)")
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
    out = Path(args.out)
    for p, nb in books.items():
        student = student_copy(nb)
        graded = sum(map(is_graded, nb.cells))
        if args.no_autograder:
            (out / "chapters").mkdir(parents=True, exist_ok=True)
            nbformat.write(student, out / "chapters" / p.name)
            print(f"{out / 'chapters' / p.name}: {sum(map(is_solution, nb.cells)) - graded} solutions removed (graded cells kept whole)")
            continue
        paths = assign(student, p.stem, out)
        print(
            f"{paths['student']}: {sum(map(is_solution, nb.cells)) - graded} solutions removed, {graded} graded exercises; "
            f"autograder {paths['zip']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
