"""The instructor's kit: student copies of the chapters (tools/make_student.py)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)
_spec = importlib.util.spec_from_file_location("kernels", ROOT / "tools" / "kernels.py")
kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernels)


def solution(source: str):
    return new_code_cell(source, metadata={"tags": ["solution", "hide-cell"]})


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_student_copy_drops_exactly_the_solutions(path):
    nb = nbformat.read(path, as_version=4)
    student = make_student.student_copy(nb)

    def explored(c):  # an exploration exercise's answer: removed whole (a graded one keeps its signature)
        return make_student.is_solution(c) and not make_student.is_graded(c)

    n_solutions, n_graded = sum(map(explored, nb.cells)), sum(map(make_student.is_graded, nb.cells))
    assert 3 <= n_solutions <= 6, f"the chapter contract asks for 3 to 6 exercises with solutions, {path.name} has {n_solutions}"
    assert n_graded >= 2, f"issue 28 asks for at least two graded exercises per chapter, {path.name} has {n_graded}"
    assert not any(map(explored, student.cells))
    kept = [c.source for c in nb.cells if not explored(c)]
    body = [c for c in student.cells if c.source != make_student.NOTE]
    assert [c.source for c in body if "exercise" not in c.metadata.get("tags", [])] == kept  # the rest unchanged, in order
    assert sum("exercise" in c.metadata.get("tags", []) for c in body) == n_solutions  # one cell to write in per solution
    assert all(not c.outputs for c in student.cells if c.cell_type == "code")
    first = len(make_student.up_to_first_exercise(nb).cells)
    assert first < len(nb.cells) and not any(map(make_student.is_solution, nb.cells[:first])), "a solution before any exercise"
    # Up to the first exercise the student copy runs exactly the chapter's own cells, which nbval executes in
    # `make test-notebooks`; after it, it must not need anything that only a removed solution defined:
    assert not make_student.solution_leaks(nb), "a kept cell uses a name only a solution defines"
    before = [c.source for c in make_student.up_to_first_exercise(student).cells if c.source != make_student.NOTE]
    assert before == [c.source for c in nb.cells[:first]]


def test_leaks_are_found_and_parameters_are_not_leaks():
    nb = new_notebook(
        cells=[
            new_markdown_cell("# T"),
            new_code_cell("x = 1"),
            solution("answer = x + 1\ns = 2\ncount = 0\ne = 5\nk = 1"),
            new_code_cell("print(answer)"),  # breaks without the solution
            new_code_cell("f = lambda s: s + x\nanswer = 3\nprint(answer)"),  # a parameter and a rebinding: fine
            new_code_cell("print(answer, s)"),  # answer is kept now; s is still only the solution's
            new_code_cell("count += 1"),  # an augmented assignment reads count first
            new_code_cell("def g():\n    local = 1\n    return local\nprint(k)\nk = 2"),  # read before the cell binds k
            new_code_cell("try:\n    pass\nexcept ValueError as e:\n    print(e)\nsquares = [j * j for j in range(3)]"),
            new_code_cell("print(local, j)"),  # names local to a function and a comprehension are not the cell's
        ]
    )
    assert make_student.solution_leaks(nb) == [(3, "answer"), (5, "s"), (6, "count"), (7, "k")]
    with pytest.raises(SyntaxError, match="cell 1"):
        make_student.solution_leaks(new_notebook(cells=[new_markdown_cell("# T"), new_code_cell("x = = 1")]))


def test_main_writes_copies_and_refuses_a_broken_one(tmp_path):
    good = new_notebook(cells=[new_markdown_cell("# T"), new_code_cell("x = 1"), solution("y = x"), new_code_cell("print(x)")])
    bad = new_notebook(cells=[new_markdown_cell("# T"), solution("y = 1"), new_code_cell("print(y)")])
    nbformat.write(good, tmp_path / "good.ipynb")
    nbformat.write(bad, tmp_path / "bad.ipynb")
    assert make_student.main([str(tmp_path / "good.ipynb"), "--out", str(tmp_path / "out"), "--no-autograder"]) == 0
    copy = nbformat.read(tmp_path / "out" / "chapters" / "good.ipynb", as_version=4)
    assert [c.source for c in copy.cells] == ["# T", make_student.NOTE, "x = 1", make_student.PLACEHOLDER, "print(x)"]
    assert make_student.main([str(tmp_path / "bad.ipynb"), "--out", str(tmp_path / "out2"), "--no-autograder"]) == 1
    assert not (tmp_path / "out2").exists()  # nothing written when a copy would break


def test_up_to_first_exercise_stops_before_the_box_or_the_section():
    box = new_markdown_cell("```{admonition} Exercise 1\n:class: tip\nDo.\n```")
    nb = new_notebook(cells=[new_markdown_cell("# T"), new_code_cell("x = 1"), box, solution("y = 2")])
    assert [c.source for c in make_student.up_to_first_exercise(nb).cells] == ["# T", "x = 1"]
    nb.cells[2] = new_markdown_cell("Text.\n\n## Exercises\n\n1. Do.")
    assert [c.source for c in make_student.up_to_first_exercise(nb).cells] == ["# T", "x = 1"]


def test_a_student_copy_runs_up_to_its_first_exercise(tmp_path):
    """End to end on the chapter whose first exercise comes earliest (chapter 12: a few seconds of copy-move)."""
    path = ROOT / "chapters" / "12_forensics.ipynb"
    part = make_student.up_to_first_exercise(make_student.student_copy(nbformat.read(path, as_version=4)))
    assert sum(c.cell_type == "code" for c in part.cells) >= 3
    kernels.execute(part, 300, tmp_path)  # a kernel on IPC sockets, as every kernel the project starts
    text = "".join(o.get("text", "") for c in part.cells if c.cell_type == "code" for o in c.outputs)
    assert "PASS C12.3" in text and "FAIL" not in text
