"""The robustness protocol's instrument (tools/robustness.py): what each run is given, and how runs are tabulated.

Running chapters is too slow for the unit tests; ``make robustness`` does that. Here the chapter run is replaced by
a stand-in that records the environment it was given and reports checks, so the bookkeeping is tested exactly."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("robustness", ROOT / "tools" / "robustness.py")
robustness = importlib.util.module_from_spec(_spec)
sys.modules["robustness"] = robustness
_spec.loader.exec_module(robustness)


@pytest.fixture
def fake_bench(monkeypatch):
    """subprocess.run stand-in: writes bench.py's JSON with one check whose value is the seed, failing for seed 2."""
    seen = []
    real_run = subprocess.run

    def run(cmd, env=None, **kwargs):
        if cmd[0] == "git":  # the commit the runs are made at
            return real_run(cmd, env=env, **kwargs)
        seen.append(env)
        out = Path(cmd[cmd.index("--out") + 1])
        seed = int(env["GENBOOK_SEED"])
        row = {"ran": True, "error": None, "wall_seconds": 1.5, "metrics": {"claim": str(seed), "always": "1"},
               "not_held": ["claim"] if seed == 2 else [], "findings": {"ranking": f"{seed - 1:+d}"}}  # fmt: skip
        out.write_text(json.dumps({"chapters": [row]}))
        return None

    monkeypatch.setenv("GENBOOK_STRICT", "1")  # a developer's setting must not reach the runs
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(robustness.subprocess, "run", run)
    return seen


def test_each_run_gets_its_seed_kernels_and_one_thread(fake_bench):
    chapter = ROOT / "chapters" / "01_introduction.ipynb"
    native = robustness.run_one(chapter, 1, "native", 60)
    default = robustness.run_one(chapter, 2, "default", 60)
    env_native, env_default = fake_bench
    assert env_native["GENBOOK_SEED"] == "1" and env_native["GENBOOK_THREADS"] == "1" and env_native["OMP_NUM_THREADS"] == "1"
    assert "ATEN_CPU_CAPABILITY" not in env_native and "GENBOOK_STRICT" not in env_native
    assert env_default["ATEN_CPU_CAPABILITY"] == "default" and "GENBOOK_STRICT" not in env_default
    assert native["checks"]["claim"] == {"ok": True, "value": "1"}
    assert default["checks"]["claim"] == {"ok": False, "value": "2"}


def test_summary_counts_the_runs_each_claim_held_in(fake_bench, tmp_path, capsys):
    out = tmp_path / "robustness.json"
    status = robustness.main(["--chapters", "01", "--seeds", "0", "1", "2", "--kernels", "native", "--jobs", "2", "--out", str(out)])
    assert status == 1  # one claim did not hold in one run
    result = json.loads(out.read_text())
    ch = result["chapters"]["01_introduction"]
    assert [r["seed"] for r in ch["runs"]] == [0, 1, 2]
    assert ch["summary"]["claim"] == {"held": 2, "runs": 3, "values": ["0", "1", "2"]}
    assert len(ch["commit"]) >= 12  # the commit the runs were made at (with "+changes" for a changed tree)
    assert ch["summary"]["always"]["held"] == 3
    assert ch["findings"] == {"ranking": ["-1", "+0", "+1"]}
    printed = capsys.readouterr().out
    assert "| claim | 2/3 ** |" in printed and "| finding (not checked): ranking | n/a | -1 · +0 · +1 |" in printed
    table = robustness.summary_table(result)
    assert "| 01_introduction | 3 (0/1/2 x native) | 1 of 2 | claim (2/3) |" in table
    assert "| 02_vae | not run under the protocol yet | | |" in table  # every chapter has a line


def test_append_adds_runs_to_a_chapter_and_replaces_a_repeated_one(fake_bench, tmp_path):
    out = tmp_path / "robustness.json"
    robustness.main(["--chapters", "01", "--seeds", "0", "1", "--kernels", "native", "--out", str(out)])
    first = json.loads(out.read_text())["chapters"]["01_introduction"]
    robustness.main(["--chapters", "01", "--seeds", "1", "2", "--kernels", "native", "--jobs", "1", "--out", str(out), "--append"])
    ch = json.loads(out.read_text())["chapters"]["01_introduction"]
    assert [r["seed"] for r in ch["runs"]] == [0, 1, 2]  # seed 1 run again: its new run replaces the old one
    assert ch["summary"]["claim"] == {"held": 2, "runs": 3, "values": ["0", "1", "2"]}
    assert ch["findings"] == {"ranking": ["-1", "+0", "+1"]}
    assert ch["seconds"] >= first["seconds"] and ch["commit"] == first["commit"]  # the same tree: one commit named
    assert ch["jobs"] == "2; then 1"  # the entry lists both invocations ...
    assert [r["jobs"] for r in ch["runs"]] == [2, 1, 1]  # ... each run keeps its own: the kept seed 0, the new 1 and 2
    assert ch["runs"][0]["date"] == first["runs"][0]["date"]
    assert all(r["commit"] == ch["commit"] and r["cpu"] == ch["cpu"] for r in ch["runs"])
    robustness.main(["--chapters", "01", "--seeds", "2", "--kernels", "native", "--out", str(out)])  # no --append
    assert [r["seed"] for r in json.loads(out.read_text())["chapters"]["01_introduction"]["runs"]] == [2]


def test_threads_reach_the_run_and_keep_it_apart_from_the_one_thread_run(fake_bench, tmp_path, capsys):
    chapter = ROOT / "chapters" / "01_introduction.ipynb"
    two = robustness.run_one(chapter, 0, "native", 60, threads=2)
    env = fake_bench[-1]
    assert env["GENBOOK_THREADS"] == "2" and env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"
    assert two["threads"] == 2 and robustness.setting(two) == "native/2t"
    assert "threads" not in robustness.run_one(chapter, 0, "native", 60)  # one thread: the runs already stored
    out = tmp_path / "robustness.json"
    robustness.main(["--chapters", "01", "--seeds", "0", "1", "--kernels", "native", "--out", str(out)])
    capsys.readouterr()
    robustness.main(["--chapters", "01", "--seeds", "0", "--kernels", "native", "--threads", "2", "--jobs", "1",
                     "--out", str(out), "--append"])  # fmt: skip
    ch = json.loads(out.read_text())["chapters"]["01_introduction"]
    assert [(r["seed"], robustness.setting(r)) for r in ch["runs"]] == [(0, "native"), (1, "native"), (0, "native/2t")]
    assert ch["summary"]["claim"] == {"held": 3, "runs": 3, "values": ["0", "1", "0"]}
    printed = capsys.readouterr().out
    assert "(1/2 threads, 2; then 1 at a time)" in printed and "s0/native/2t" in printed
    assert "| 01_introduction | 3 (0/1 x native/native/2t) | 2 of 2 | none |" in robustness.summary_table(json.loads(out.read_text()))
    with pytest.raises(SystemExit):
        robustness.main(["--chapters", "01", "--threads", "0", "--out", str(out)])
