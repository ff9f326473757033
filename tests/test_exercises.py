"""Graded exercises (genbook.exercises) and their autograder (tools/make_student.py, tools/grade.py): the reference
solutions in the chapters get full marks, a blank copy gets zero without crashing, a typical wrong answer fails with
feedback that names its mistake, and grading runs offline in seconds."""

import ast
import csv
import importlib.util
import re
import time
from pathlib import Path

import nbformat
import pytest

from genbook import exercises

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_student = _tool("make_student")


def _graded_cells() -> list[tuple[str, str]]:
    """(chapter file, source) of every graded cell of the book."""
    out = []
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        out += [(path.stem, c.source) for c in nb.cells if c.cell_type == "code" and make_student.is_graded(c)]
    return out


GRADED = _graded_cells()


def _function(source: str):
    namespace: dict = {}
    exec(compile(source, "<graded cell>", "exec"), namespace)  # noqa: S102 - the book's own reference solutions
    (name,) = [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    return namespace[name]


def _blank(source: str) -> str:
    """What the student copy holds: otter assign's treatment of the markers, each marked body replaced by `...`."""
    return re.sub(r"( *)# BEGIN SOLUTION\n.*?# END SOLUTION", r"\1...", make_student.mark_bodies(source), flags=re.DOTALL)


def test_every_exercise_is_in_its_chapter_once():
    where = {}
    for stem, source in GRADED:
        fn = _function(source)
        assert fn.__name__ in exercises.EXERCISES, f"{stem}: graded cell defines {fn.__name__}, which genbook.exercises does not grade"
        where.setdefault(fn.__name__, []).append(stem)
    assert sorted(where) == sorted(exercises.EXERCISES)
    for name, stems in where.items():
        assert len(stems) == 1 and int(stems[0][:2]) == exercises.get(name).chapter, (name, stems)
    for ex in exercises.EXERCISES.values():
        assert any(not c.hidden for c in ex.cases) and any(c.hidden for c in ex.cases), f"{ex.function}: public and hidden checks"


@pytest.mark.parametrize("stem,source", GRADED, ids=[f"{s}-{_function(src).__name__}" for s, src in GRADED])
def test_reference_full_marks_blank_zero(stem, source):
    fn = _function(source)
    assert [msg for _, msg in exercises.run_cases(fn)] == [None] * len(exercises.get(fn).cases)
    blank = _function(_blank(source))
    assert blank.__name__ == fn.__name__ and blank.__doc__ == fn.__doc__  # the signature and docstring stay
    results = exercises.run_cases(blank)  # never raises: every failure is feedback
    assert all(msg for _, msg in results), f"{fn.__name__}: a check passes on an empty body"


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_a_typical_mistake_fails_with_its_feedback(name):
    ex = exercises.get(name)
    failed = [msg for _, msg in exercises.run_cases(ex.mistake, name) if msg]
    assert failed, f"{name}: the typical wrong answer passes every check"
    assert any(ex.mistake_says in msg for msg in failed), failed


def test_feedback_says_what_is_wrong():
    def reparameterize(mu, logvar, eps):
        return (mu + logvar.exp() * eps)[:, :1]  # wrong shape

    msg = exercises.run_cases(reparameterize, hidden=False)[0][1]
    assert "a batch of codes: the answer has shape (5, 1); expected (5, 4)" in msg

    def gaussian_kl(mu, logvar):
        raise RuntimeError("oops")

    assert all("raised RuntimeError: oops" in m for _, m in exercises.run_cases(gaussian_kl))
    with pytest.raises(KeyError, match="the exercises are: frechet_distance"):
        exercises.get("no_such_function")


def test_check_prints_and_raises_only_when_strict(monkeypatch, capsys):
    def g_loss_nonsaturating(fake_logits):
        return fake_logits.mean()

    monkeypatch.setenv("GENBOOK_STRICT", "0")
    assert exercises.check(g_loss_nonsaturating) == 0
    out = capsys.readouterr().out
    assert "0 of 2 checks passed; the autograder runs 1 more" in out and "not yet:" in out
    monkeypatch.setenv("GENBOOK_STRICT", "1")
    with pytest.raises(exercises.ExerciseError, match="failed 2 of its checks"):
        exercises.check(g_loss_nonsaturating)


def test_mark_bodies_hides_the_body_after_the_docstring():
    source = 'import math\n\n\ndef f(x,\n      y):\n    """Doc."""\n    def inner(z):\n        return z\n\n    return inner(x) + y\n'
    marked = make_student.mark_bodies(source)
    assert marked.splitlines()[5:7] == ['    """Doc."""', "    # BEGIN SOLUTION"] and marked.rstrip().endswith("# END SOLUTION")
    assert _blank(source) == 'import math\n\n\ndef f(x,\n      y):\n    """Doc."""\n    ...\n'
    assert _blank("def g(a):\n    return a\n") == "def g(a):\n    ...\n"
    with pytest.raises(ValueError, match="must define"):
        make_student.mark_bodies("x = 1")


def test_grading_finds_the_exercise_cells_without_the_tags():
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        new_code_cell("train_for_ten_minutes()"),
        new_code_cell("import torch\n\n\ndef reparameterize(mu, logvar, eps):\n    ...", metadata={"tags": ["otter_ignore"]}),
        new_code_cell("def helper(x):\n    return x"),
        new_code_cell("def gaussian_kl(mu, logvar) :\n    return (", metadata={"tags": ["solution"]}),  # a syntax error: run, reported
    ]
    out = _tool("grade").retag(new_notebook(cells=cells), {"reparameterize", "gaussian_kl"})
    assert [c.metadata["tags"] for c in out.cells] == [["otter_ignore"], [], ["otter_ignore"], ["solution"]]


@pytest.mark.integration
def test_otter_copies_and_grading_end_to_end(tmp_path):
    """make student's otter pipeline on chapter 2, then make grade's grader on three submissions: the reference
    solutions (full marks), the blank student copy (zero), and a sign error in the KL (that exercise fails, with its
    feedback). Each grading runs the graded cells only, in a fresh kernel, within the issue's 30 s."""
    out = tmp_path / "student"
    paths = make_student.assign(make_student.student_copy(nbformat.read(ROOT / "chapters" / "02_vae.ipynb", as_version=4)), "02_vae", out)
    student = nbformat.read(paths["student"], as_version=4)
    graded = [c.source for c in student.cells if make_student.is_graded(c)]
    assert len(graded) == 2 and all(src.rstrip().endswith("...") for src in graded)
    assert "torch.exp(0.5 * logvar)" not in "".join(c.source for c in student.cells)  # no solution left
    assert not any("grader.check" in c.source for c in student.cells)
    runnable = [c for c in student.cells if c.cell_type == "code" and "otter_ignore" not in c.metadata.get("tags", [])]
    assert runnable and all(make_student.is_graded(c) for c in runnable)  # grading runs nothing else

    subs = tmp_path / "subs"
    subs.mkdir()
    for c in student.cells:  # as if an editor had dropped every tag: grading must still skip the training
        c.metadata.pop("tags", None)
    nbformat.write(student, subs / "02_vae-blank.ipynb")
    reference = nbformat.read(paths["solutions"], as_version=4)
    nbformat.write(reference, subs / "reference-02_vae.ipynb")
    for c in reference.cells:
        if "def gaussian_kl" in c.source:
            c.source = c.source.replace("- logvar - 1", "+ logvar - 1")
    nbformat.write(reference, subs / "02_vae-sign.ipynb")
    grade = _tool("grade")
    start = time.perf_counter()
    assert grade.main([str(subs), "--autograders", str(out / "autograder")]) == 0
    assert time.perf_counter() - start < 3 * 30
    rows = {(r["submission"], r["exercise"]): r for r in csv.DictReader(open(subs / "grades.csv"))}
    assert len(rows) == 6
    for (sub, _), r in rows.items():
        assert r["chapter"] == "02_vae" and float(r["possible"]) > 0
        if sub.startswith("reference"):
            assert float(r["score"]) == float(r["possible"]) and not r["feedback"]
        if "blank" in sub:
            assert float(r["score"]) == 0 and "returned None" in r["feedback"]
    sign = rows[("02_vae-sign.ipynb", "e2_2_gaussian_kl")]
    assert float(sign["score"]) < float(sign["possible"]) and "sign of the log-variance term" in sign["feedback"]
    assert float(rows[("02_vae-sign.ipynb", "e2_1_reparameterize")]["score"]) == float(
        rows[("02_vae-sign.ipynb", "e2_1_reparameterize")]["possible"]
    )
