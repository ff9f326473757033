"""Grade a folder of student notebooks with the chapters' autograders, offline, into one CSV.

Usage: python tools/grade.py SUBMISSIONS [--autograders _student/autograder] [--out SUBMISSIONS/grades.csv]

Each notebook in SUBMISSIONS (searched recursively) is matched to its chapter by the assignment name otter assign
stored in it (``make student`` wrote the copies the students got), or else by a chapter's file name inside its own
name (``02_vae-ana.ipynb``). Otter runs its graded cells only, in a fresh kernel, without Docker, and calls each check
of ``genbook.exercises`` on the student's function. The graded cells are found again here, as the cells that define
one of the chapter's exercise functions, and every other code cell is tagged otter_ignore, so nothing is trained
even if an editor dropped the tags ``make student`` set.
The CSV has one row per notebook and exercise: score, possible points, and the feedback of the checks that failed.
A notebook that cannot be matched or graded gets a row saying why; the others are still graded.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

FIELDS = ["submission", "chapter", "exercise", "score", "possible", "feedback"]


def chapter_of(path: Path, names: list[str]) -> str | None:
    """The chapter (autograder name) a submission belongs to, or None."""
    try:
        meta = nbformat.read(path, as_version=4).metadata
    except Exception:  # an unreadable notebook is reported by grade(), not here
        meta = {}
    name = meta.get("otter", {}).get("assignment_name")
    if name in names:
        return name
    return next((n for n in sorted(names, key=len, reverse=True) if n in path.stem), None)


def feedback(message: str) -> str:
    """The teaching part of otter's failure message: our ExerciseError's text, else its last line."""
    found = re.findall(r"(?:ExerciseError|AssertionError): (.*)", message)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else message


def retag(nb, functions: set[str]):
    """``nb`` with every code cell that does not define one of ``functions`` tagged otter_ignore, and the cells that
    do untagged: what otter runs when it grades. A line-based match, so a cell with a syntax error is still run
    (and its error reported) rather than skipped."""
    define = re.compile(r"^(?:async\s+)?def\s+(\w+)\s*\(", re.MULTILINE)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = [t for t in cell.metadata.get("tags", []) if t != "otter_ignore"]
        if not functions & set(define.findall(cell.source)):
            tags.append("otter_ignore")
        cell.metadata["tags"] = tags
    return nb


def grade(path: Path, zip_path: Path) -> list[dict]:
    """One row per exercise of ``path``, graded with the autograder at ``zip_path``."""
    from otter.api import grade_submission

    from genbook import exercises

    chapter = int(zip_path.stem[:2])
    nb = retag(nbformat.read(path, as_version=4), {e.function for e in exercises.for_chapter(chapter)})
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / path.name
        nbformat.write(nb, prepared)
        results = grade_submission(str(prepared), str(zip_path), quiet=True)
    rows = []
    for name, result in results.results.items():
        failed = [feedback(tc.message) for tc in result.test_case_results if not tc.passed]
        rows.append({"exercise": name, "score": result.score, "possible": result.possible, "feedback": " | ".join(dict.fromkeys(failed))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", type=Path, help="a folder of student notebooks (.ipynb)")
    parser.add_argument("--autograders", type=Path, default=Path("_student/autograder"), help="where make student wrote NAME.zip")
    parser.add_argument("--out", type=Path, help="the CSV to write (default: SUBMISSIONS/grades.csv)")
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        print(f"{args.submissions} is not a folder: give the folder that holds the students' notebooks", file=sys.stderr)
        return 2
    zips = {p.stem: p for p in args.autograders.glob("*.zip")}
    if not zips:
        print(f"no autograders in {args.autograders}: run `make student` first (it writes them there)", file=sys.stderr)
        return 2
    notebooks = sorted(p for p in args.submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        print(f"no notebooks (.ipynb) in {args.submissions}", file=sys.stderr)
        return 2
    out = args.out or args.submissions / "grades.csv"
    rows = []
    for path in notebooks:
        name, start = chapter_of(path, list(zips)), time.perf_counter()
        base = {"submission": str(path.relative_to(args.submissions)), "chapter": name or ""}
        if name is None:
            rows.append(
                {**base, "exercise": "", "score": 0, "possible": 0, "feedback": "not matched to a chapter: name it after one (02_vae...)"}
            )
            print(f"{path}: not matched to a chapter", file=sys.stderr)
            continue
        try:
            graded = grade(path, zips[name])
        except Exception as exc:  # one broken notebook must not stop the others
            rows.append(
                {**base, "exercise": "", "score": 0, "possible": 0, "feedback": f"could not be graded: {type(exc).__name__}: {exc}"}
            )
            print(f"{path}: could not be graded: {exc}", file=sys.stderr)
            continue
        rows += [{**base, **r} for r in graded]
        total, possible = sum(r["score"] for r in graded), sum(r["possible"] for r in graded)
        print(f"{path}: {name}, {total:g} of {possible:g} points ({time.perf_counter() - start:.1f} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
