"""The timing instrument (tools/timings.py): each chapter alone at the default threads, once per kernel set, in
alternating order, with the run report's load and speed probe kept. The chapter run is replaced by a stand-in."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for name in ("robustness", "timings"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
timings = sys.modules["timings"]


@pytest.fixture
def fake_bench(monkeypatch):
    """subprocess.run stand-in: bench.py's JSON for one chapter, slower under the AVX2 kernels."""
    seen = []
    real_run = subprocess.run

    def run(cmd, env=None, **kwargs):
        if cmd[0] == "git":
            return real_run(cmd, env=env, **kwargs)
        stem = cmd[cmd.index("--chapters") + 1]
        seen.append((stem, env))
        avx2 = env.get("ATEN_CPU_CAPABILITY") == "avx2"
        row = {"ran": True, "error": None, "chapter_seconds": 120.0 if avx2 else 100.0, "wall_seconds": 125.0,
               "cpu_use": "this process (cores) 1.96, other processes (cores) 0.01, cpu steal (%) 0.0",
               "speed_probe_ms": "21.0 / 20.5", "checks_passed": 3, "checks_total": 3,
               "not_held": ["claim"] if stem.startswith("02") and avx2 else []}  # fmt: skip
        Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps({"chapters": [row]}))
        return None

    for k in ("GENBOOK_STRICT", "GENBOOK_THREADS", "GENBOOK_SEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(k, "1")  # a developer's settings must not reach the runs
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(subprocess, "run", run)  # the module robustness.run_bench calls
    return seen


def test_each_chapter_runs_alone_at_default_threads_in_alternating_order(fake_bench, tmp_path, capsys):
    out = tmp_path / "timings.json"
    status = timings.main(["--chapters", "01", "02", "--kernels", "native", "avx2", "--out", str(out)])
    assert status == 1  # a check did not hold in chapter 2 under AVX2
    order = [(stem[:2], env.get("ATEN_CPU_CAPABILITY", "native")) for stem, env in fake_bench]
    assert order == [("01", "native"), ("01", "avx2"), ("02", "avx2"), ("02", "native")]
    for _, env in fake_bench:
        assert not {"GENBOOK_STRICT", "GENBOOK_THREADS", "GENBOOK_SEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS"} & set(env)
    native_env = fake_bench[0][1]
    assert "ONEDNN_MAX_CPU_ISA" not in native_env  # the native run gets the host's own kernels
    result = json.loads(out.read_text())
    ch = result["chapters"]["01_introduction"]
    assert ch["native"]["chapter_seconds"] == 100.0 and ch["avx2"]["chapter_seconds"] == 120.0
    assert ch["native"]["speed_probe_ms"] == "21.0 / 20.5" and "steal" in ch["native"]["cpu_use"]
    printed = capsys.readouterr().out
    assert "| 01_introduction | 180 | 100 | 120 | 1.20 |" in printed
    assert timings.budget("08_text_to_image") == 240 and timings.budget("11_video") == 180


def test_append_replaces_the_timed_chapters_and_keeps_the_others(fake_bench, tmp_path):
    out = tmp_path / "timings.json"
    assert timings.main(["--chapters", "01", "02", "--kernels", "native", "--out", str(out)]) == 0
    before = json.loads(out.read_text())
    before["chapters"]["01_introduction"]["native"]["chapter_seconds"] = 99.0  # an older measurement of chapter 1
    before["chapters"]["02_vae"]["native"]["chapter_seconds"] = 77.0
    before["date"], before["method"] = "2026-01-01 00:00", "by hand"
    out.write_text(json.dumps(before))
    assert timings.main(["--chapters", "02", "--kernels", "native", "--out", str(out), "--append"]) == 0
    after = json.loads(out.read_text())
    assert list(after["chapters"]) == ["01_introduction", "02_vae"]
    assert after["chapters"]["01_introduction"]["native"]["chapter_seconds"] == 99.0  # kept
    assert after["chapters"]["02_vae"]["native"]["chapter_seconds"] == 100.0  # replaced
    assert after["date"].startswith("2026-01-01 00:00; then ") and after["cpu"] == before["cpu"]
    assert after["method"] == "by hand"  # a field only the old file has stays
    assert "date" in after["chapters"]["02_vae"]
