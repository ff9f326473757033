"""The robustness protocol: run chapters under several seeds and kernel sets, and tabulate every check in every run.

Usage: python tools/robustness.py [--chapters 05 08] [--seeds 0 1 2] [--kernels native default] [--jobs 2]
                                  [--threads 1] [--out bench/robustness.json] [--append]

A training run amplifies float-level differences between machines (another CPU's vector kernels change a convolution
in the 6th digit, and a GAN a few hundred steps later), so a claim whose margin was chosen on one machine can fail on
the next. This stands in for other machines cheaply: each chapter runs once per seed and per kernel set, where

- ``native``  is this host's own kernels (AVX-512 or AVX2, whatever torch picks),
- ``default`` is ``ATEN_CPU_CAPABILITY=default``: torch's scalar kernels, other float results at almost no cost,
- ``avx2``    is ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``: on an AVX-512
  host, torch's AVX2 code paths, as an AVX2-only host runs them. All chapters together took 17% longer under it
  than with the native kernels on an AMD EPYC host with AVX-512 (2026-12-07, ``bench/timings.json``), far less than
  the twofold slowdown measured on one AVX2-only host.

Runs go ``--jobs`` at a time, each with one torch thread (two processes with two threads each on two cores slow each
other several times over). ``--threads 2 --jobs 1`` runs them at two threads instead, as a reader runs a chapter:
another way to sum a reduction, so other float results again; on 2026-12-07 two chapter settings that held in all six
one-thread runs failed a check at two threads (``bench/HISTORY.md``). A run at other than one thread is labelled with
its threads ("s0/native/2t") and kept apart from the one-thread run of its seed and kernel set. Checks do not raise
here (no ``GENBOOK_STRICT``): every check's value is recorded in every run. The results are merged into ``--out``
chapter by chapter (a chapter run again replaces its old runs; with ``--append`` they join its old runs, one with the
same seed, kernel set and threads replaced; the entry's date, commit, CPU and jobs then list every invocation that
wrote to it, in order, including one whose runs were all replaced later, and its seconds add them all up; each run
records its own date, commit, CPU, jobs and wall time), and a table says, for each check, in how many runs it held and the
values it took. Exit status 1 when any check did not hold in some run or a chapter failed to run. Not part of CI: six
runs of a chapter take a quarter of an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench import chapters  # noqa: E402
from genbook.runtime import cpu_model  # noqa: E402

KERNELS = {
    "native": {},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def source_commit(chapter: Path) -> str:
    """The commit the chapter and the package were run at, with "+changes" when either differed from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.check_output([*git, "rev-parse", "--short=12", "HEAD"], text=True).strip()
        dirty = subprocess.check_output([*git, "status", "--porcelain", "--", str(chapter), "src"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def run_bench(chapter: Path, env: dict[str, str], timeout: int) -> dict:
    """``tools/bench.py`` on one chapter in ``fast``, in its own process with ``env``: bench's row for it, or
    ``{"ran": False, "error": ...}`` when the run wrote none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, str(ROOT / "tools" / "bench.py"), "--profile", "fast", "--chapters", chapter.stem,
               "--out", str(out), "--timeout", str(timeout)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if not out.exists():
            return {"ran": False, "error": (proc.stderr or proc.stdout)[-500:]}
        return json.loads(out.read_text())["chapters"][0]


def kernel_env(kernels: str, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without ``GENBOOK_STRICT``, any kernel variable and ``unset``, then the kernel
    set's variables: what a run under ``kernels`` is given."""
    drop = ("GENBOOK_STRICT", *KERNELS["avx2"], *unset)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **KERNELS[kernels]}


def run_one(chapter: Path, seed: int, kernels: str, timeout: int, threads: int = 1) -> dict:
    """One chapter, one seed, one kernel set, in its own process (bench.py), with ``threads`` torch threads (a run
    at other than one thread records them)."""
    env = kernel_env(kernels)
    n = str(threads)
    env.update({"GENBOOK_SEED": str(seed), "GENBOOK_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})
    row = run_bench(chapter, env, timeout)
    run = {"seed": seed, "kernels": kernels, **({"threads": threads} if threads != 1 else {})}
    if "metrics" not in row:
        return {**run, "ran": False, "error": row["error"], "checks": {}}
    checks = {name: {"ok": name not in row["not_held"], "value": value} for name, value in row["metrics"].items()}
    return {**run, "ran": row["ran"], "error": row["error"], "wall_seconds": row["wall_seconds"], "checks": checks,
            "findings": row.get("findings", {})}  # fmt: skip


def setting(run: dict) -> str:
    """A run's kernel set, with its torch threads when not one: "native", "native/2t"."""
    return run["kernels"] + (f"/{run['threads']}t" if run.get("threads", 1) != 1 else "")


def join_fields(old: dict, new: dict) -> dict:
    """``new``'s fields, each one that ``old`` holds with another value written "old; then new"."""
    return {k: v if old.get(k) in (None, v) else f"{old[k]}; then {v}" for k, v in new.items()}


def append_runs(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` runs followed by ``new`` ones, a new run replacing an old one with the same seed, kernel set and
    threads."""
    fresh = {(r["seed"], setting(r)) for r in new}
    return [r for r in old if (r["seed"], setting(r)) not in fresh] + new


def summarize(runs: list[dict]) -> dict:
    """For each check: in how many runs it held, out of how many ran, and its values in run order."""
    names: dict[str, None] = {}
    for r in runs:
        names.update(dict.fromkeys(r["checks"]))
    out = {}
    for name in names:
        seen = [r["checks"][name] for r in runs if name in r["checks"]]
        out[name] = {"held": sum(c["ok"] for c in seen), "runs": len(runs), "values": [c["value"] for c in seen]}
    return out


def summarize_findings(runs: list[dict]) -> dict:
    """For each finding (a printed result that is not a claim): its values in run order."""
    names: dict[str, None] = {}
    for r in runs:
        names.update(dict.fromkeys(r.get("findings", {})))
    return {name: [r["findings"][name] for r in runs if name in r.get("findings", {})] for name in names}


def threads_said(runs: list[dict]) -> str:
    """The threads the runs had: "one thread" when every run had one, else "1/2 threads" and the like."""
    counts = sorted({r.get("threads", 1) for r in runs})
    return "one thread" if counts == [1] else "/".join(map(str, counts)) + " threads"


def table(result: dict) -> str:
    lines = []
    for stem, ch in result["chapters"].items():
        walls = [r["wall_seconds"] for r in ch["runs"] if r.get("wall_seconds")]
        ran = sum(r["ran"] for r in ch["runs"])
        lines.append(f"\n## {stem}: {ran}/{len(ch['runs'])} runs completed; wall {min(walls, default=0):.0f}-{max(walls, default=0):.0f} s "
                     f"({threads_said(ch['runs'])}, {ch['jobs']} at a time)")  # fmt: skip
        lines.append("| check | held | values (" + ", ".join(f"s{r['seed']}/{setting(r)}" for r in ch["runs"]) + ") |")
        lines.append("|---|---|---|")
        for name, s in ch["summary"].items():
            mark = "" if s["held"] == s["runs"] else " **"
            lines.append(f"| {name} | {s['held']}/{s['runs']}{mark} | {' · '.join(s['values'])} |")
        for name, values in ch.get("findings", {}).items():
            lines.append(f"| finding (not checked): {name} | n/a | {' · '.join(values)} |")
        for r in ch["runs"]:
            if not r["ran"]:
                lines.append(f"- seed {r['seed']}, {setting(r)}: did not run to the end: {r['error']}")
    return "\n".join(lines)


def summary_table(result: dict) -> str:
    """One line per chapter, for the README and the instructor's page: how many of its claims held in every run."""
    lines = ["| chapter | runs (seeds x kernels) | claims held in every run | claims that did not |", "|---|---|---|---|"]
    stems = sorted({p.stem for p in chapters(None)} | set(result["chapters"]))
    for stem in stems:
        ch = result["chapters"].get(stem)
        if ch is None:
            lines.append(f"| {stem} | not run under the protocol yet | | |")
            continue
        runs = ch["runs"]
        plan = f"{len(runs)} ({'/'.join(sorted({str(r['seed']) for r in runs}))} x {'/'.join(sorted({setting(r) for r in runs}))})"
        held = [n for n, s in ch["summary"].items() if s["held"] == s["runs"]]
        missed = [f"{n} ({s['held']}/{s['runs']})" for n, s in ch["summary"].items() if s["held"] < s["runs"]]
        lines.append(f"| {stem} | {plan} | {len(held)} of {len(ch['summary'])} | {'; '.join(missed) or 'none'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chapters", nargs="*", default=None, help="chapter number prefixes (05 08) or stems; default all")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--kernels", nargs="*", choices=tuple(KERNELS), default=["native", "default"])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (2 with --jobs 1 on two cores: as a reader runs a chapter)")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "bench" / "robustness.json"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
    p.add_argument("--summary", action="store_true", help="print the per-chapter summary of --out as markdown and run nothing")
    p.add_argument("--append", action="store_true",
                   help="add these runs to each chapter's runs already in --out (other seeds or kernel sets, run at another "
                        "time) instead of replacing them; a run with the same seed, kernel set and threads is replaced")  # fmt: skip
    args = p.parse_args(argv)
    if args.summary:
        print(summary_table(json.loads(Path(args.out).read_text())))
        return 0
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit("--jobs and --threads must each be at least 1")
    if args.jobs * args.threads > (os.cpu_count() or 1):
        print(f"note: {args.jobs} runs at a time with {args.threads} threads each is more threads than this machine's "
              f"{os.cpu_count()} cores: the runs will slow each other (results are still valid)", flush=True)  # fmt: skip
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {"chapters": {}}
    import torch

    for path in chapters(args.chapters):
        plan = [(s, k) for s in args.seeds for k in args.kernels]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda sk, path=path: run_one(path, sk[0], sk[1], args.timeout, args.threads), plan))
        seconds = time.perf_counter() - start
        entry = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": source_commit(path),
            "cpu": cpu_model(),
            "native kernels": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "jobs": args.jobs,
        }
        for r in runs:  # each run keeps where and when it was made, which the entry's joined fields cannot say
            r.update({"date": entry["date"], "commit": entry["commit"], "cpu": entry["cpu"], "jobs": args.jobs})
        old = result["chapters"].get(path.stem) if args.append else None
        if old is not None:  # the old runs stay; where a field differs, both values are kept
            runs = append_runs(old["runs"], runs)
            entry = join_fields(old, entry)
            seconds += old["seconds"]
        entry["seconds"] = round(seconds, 1)
        result["chapters"][path.stem] = {**entry, "runs": runs, "summary": summarize(runs), "findings": summarize_findings(runs)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")  # after each chapter: a long run keeps what it measured
        print(table({"chapters": {path.stem: result["chapters"][path.stem]}}), flush=True)
    print(f"\nwritten to {out}")
    bad = [
        stem
        for stem in (p.stem for p in chapters(args.chapters))
        if any(not r["ran"] for r in result["chapters"][stem]["runs"])
        or any(s["held"] < s["runs"] for s in result["chapters"][stem]["summary"].values())
    ]
    if bad:
        print(f"chapters with a check that did not hold in every run, or a run that failed: {' '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
