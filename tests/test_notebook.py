"""Tests for genbook.notebook: check, show_source and run_report."""

import sys

import pytest
import torch

from genbook import notebook, runtime
from genbook.notebook import CheckFailed


def test_check_pass_prints_and_returns_none(capsys):
    """A passing check prints 'PASS name: value (expected ...)' and returns None (so a cell does not echo it)."""
    assert notebook.check("accuracy", True, 0.96123, "> 0.95") is None
    out = capsys.readouterr().out
    assert out.startswith("PASS accuracy")
    assert out.strip() == "PASS accuracy: 0.9612 (expected > 0.95)"


def test_check_formats_containers(capsys):
    """Values in lists and dicts are shown with 4 significant digits."""
    notebook.check("pair", True, {"fd": 1.23456, "sizes": [1, 2.5]})
    assert capsys.readouterr().out.strip() == "PASS pair: {fd: 1.235, sizes: [1, 2.5]}"


def test_check_failure_raises_with_name(monkeypatch):
    """Under GENBOOK_STRICT=1 (make test, CI) a failing check raises CheckFailed (an AssertionError) whose message names
    the check and value."""
    monkeypatch.setenv("GENBOOK_STRICT", "1")
    with pytest.raises(CheckFailed, match="CHECK FAILED loss decreases: 3") as info:
        notebook.check("loss decreases", False, 3, "< 1")
    assert isinstance(info.value, AssertionError)
    assert "expected < 1" in str(info.value)


@pytest.mark.parametrize("profile", ["fast", "full"])
def test_check_reports_instead_of_stopping_unless_strict(monkeypatch, capsys, profile):
    """Outside GENBOOK_STRICT a claim that does not hold prints a NOT HELD banner with its values, is counted, and the
    chapter goes on; GENBOOK_STRICT=1 (and only a value other than 0) makes it an error, in either profile."""
    rt = runtime.setup(seed=0, profile=profile, device="cpu", quiet=True)
    notebook.check("gap", False, 0.1, "> 0.2")
    out = capsys.readouterr().out
    assert out.startswith("!!!!")
    assert "NOT HELD gap: 0.1 (expected > 0.2)" in out
    assert ("not been calibrated" in out) == (profile == "full")
    assert rt.checks == [("gap", False, "0.1")]
    monkeypatch.setenv("GENBOOK_STRICT", "0")
    notebook.check("gap", False, 0.1, "> 0.2")
    assert "NOT HELD" in capsys.readouterr().out
    monkeypatch.setenv("GENBOOK_STRICT", "1")
    with pytest.raises(CheckFailed):
        notebook.check("gap", False, 0.1, "> 0.2")
    assert [ok for _, ok, _ in rt.checks] == [False, False, False]


def test_static_output_reads_genbook_static(monkeypatch):
    """static_output() is True for GENBOOK_STATIC=1 and False when it is unset or 0."""
    assert notebook.static_output() is False
    monkeypatch.setenv("GENBOOK_STATIC", "0")
    assert notebook.static_output() is False
    monkeypatch.setenv("GENBOOK_STATIC", "1")
    assert notebook.static_output() is True


def test_progress_is_disabled_when_static(monkeypatch):
    """progress() gives a working tqdm bar, disabled under GENBOOK_STATIC=1 or when asked."""
    assert list(notebook.progress(range(3), disable=True)) == [0, 1, 2]
    assert notebook.progress(total=3).disable is False
    monkeypatch.setenv("GENBOOK_STATIC", "1")
    bar = notebook.progress(total=3)
    assert bar.disable is True
    bar.close()


def test_run_report_needs_setup():
    """run_report without a prior setup() raises RuntimeError."""
    assert runtime.current() is None
    with pytest.raises(RuntimeError, match="setup"):
        notebook.run_report()


def test_run_report_after_setup(capsys):
    """After setup, run_report prints and returns profile, device, CPU, threads, seed, wall time and the checks
    passed and not held."""
    runtime.setup(seed=5, profile="fast", device="cpu", quiet=True)
    notebook.check("first", True, 1)
    notebook.check("second", False, 2)
    report = notebook.run_report()
    out = capsys.readouterr().out
    assert report["profile"] == "fast"
    assert report["device"].startswith("cpu")
    assert report["seed"] == 5
    assert 0 <= report["wall time (s)"] < 60
    assert report["checks passed"] == "1/2"
    assert report["checks not held"] == "second"
    assert report["cpu"] and report["cpu"] == runtime.cpu_model()
    assert report["torch threads"] == torch.get_num_threads()
    assert "torch" in report
    assert "Run report" in out and "checks passed" in out
    assert "this process (cores)" in report["cpu use during the run"]
    before, after = (float(v) for v in report["speed probe (ms), before / after"].split(" / "))
    assert before > 0 and after > 0


def test_show_source_displays_markdown(monkeypatch):
    """With IPython present, show_source displays the object's source as a Markdown code block."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    notebook.show_source(notebook.check)
    (markdown,) = shown
    assert "`genbook.notebook.check`" in markdown.data
    assert "def check(name: str" in markdown.data
    assert "```python" in markdown.data


def test_show_source_prints_without_ipython(monkeypatch, capsys):
    """Without IPython, show_source prints the qualified name and the source."""
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # makes the import raise ImportError
    notebook.show_source(runtime.Runtime.pick)
    out = capsys.readouterr().out
    assert out.startswith("# genbook.runtime.Runtime.pick")
    assert "def pick(self" in out


def test_finding_prints_records_and_never_raises(monkeypatch, capsys, tmp_path):
    """A finding is printed and recorded beside the checks (run report, GENBOOK_REPORT), even under GENBOOK_STRICT."""
    monkeypatch.setenv("GENBOOK_STRICT", "1")
    report = tmp_path / "report.jsonl"
    monkeypatch.setenv("GENBOOK_REPORT", str(report))
    rt = runtime.setup(seed=0, profile="fast", device="cpu", quiet=True)
    assert notebook.finding("best GAN minus diffusion", -0.0234, "varies with the seed") is None
    assert capsys.readouterr().out.strip() == "FINDING best GAN minus diffusion: -0.0234 (varies with the seed)"
    assert rt.checks == [] and rt.findings == [("best GAN minus diffusion", "-0.0234")]
    out = notebook.run_report()
    assert out["findings (not checked)"] == 1
    import json

    line = json.loads(report.read_text().splitlines()[-1])
    assert line["findings"] == [{"name": "best GAN minus diffusion", "value": "-0.0234"}]
