"""Time every chapter in ``fast`` as a reader runs it (alone, torch at its default threads), under one or more kernel sets.

Usage: python tools/timings.py [--chapters 05 08] [--kernels native avx2] [--out bench/timings.json] [--append]

The budget (180 s per chapter, 240 s for chapters 8, 9, 10 and 13) is for ``make execute``: one chapter at a time,
torch at its default threads (two on the book's 2-core hosts). This runs each chapter that way through
``tools/bench.py`` (a fresh kernel, the committed notebook untouched), once per kernel set, the sets in turn for one
chapter before the next chapter, in alternating order, so the runs of a chapter see the same hour of the host. Each
row keeps the run report's wall time, its device line (with the thread count), the CPU use during the run (this
process, other processes, hypervisor steal) and the speed probe (``genbook.runtime.speed_probe``), so a slow row can
be told apart from a run on a busy machine. On an AVX2-only host run it with ``--kernels native``: that is the
measurement the budget asks for. Not part of CI (about 25 minutes per kernel set for all chapters). Exit status 1 if
a chapter failed to run or a check did not hold. With ``--append`` the chapters timed replace their rows in ``--out``
and the other rows stay; each row carries the date it was measured, and a top-level field that differs from the old
file's keeps both ("old; then new").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from robustness import KERNELS, join_fields, kernel_env, run_bench, source_commit  # noqa: E402

from bench import chapters  # noqa: E402
from genbook.runtime import cpu_kernels, cpu_model  # noqa: E402

BUDGET = {"08": 240, "09": 240, "10": 240, "13": 240}  # seconds; every other chapter 180


def budget(stem: str) -> int:
    return BUDGET.get(stem[:2], 180)


def run(chapter: Path, kernels: str, timeout: int) -> dict:
    """One chapter under one kernel set, alone, torch at its default threads."""
    env = kernel_env(kernels, unset=("GENBOOK_THREADS", "GENBOOK_SEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    row = run_bench(chapter, env, timeout)
    keep = ("ran", "error", "chapter_seconds", "wall_seconds", "device", "cpu_use", "speed_probe_ms", "checks_passed", "checks_total",
            "not_held")  # fmt: skip
    return {k: row.get(k) for k in keep}


def table(result: dict) -> str:
    sets = result["kernels"]
    head = "| chapter | budget | " + " | ".join(f"{k} (s)" for k in sets) + (" | ratio |" if len(sets) == 2 else " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for stem, runs in result["chapters"].items():
        secs = [runs.get(k, {}).get("chapter_seconds") for k in sets]
        cells = [f"{s:.0f}" if s is not None else "failed" for s in secs]
        ratio = f" | {secs[1] / secs[0]:.2f} |" if len(sets) == 2 and None not in secs else (" | - |" if len(sets) == 2 else " |")
        lines.append(f"| {stem} | {budget(stem)} | " + " | ".join(cells) + ratio)
    return "\n".join(lines)


def merge(old: dict, new: dict) -> dict:
    """``old``'s rows with ``new``'s chapters replacing or joining them, in chapter order; a top-level field that
    differs keeps both values."""
    meta = {k: v for k, v in old.items() if k != "chapters"}  # a field only the old file has (a method note) stays
    meta.update(join_fields(old, {k: v for k, v in new.items() if k != "chapters"}))
    rows = {**old.get("chapters", {}), **new["chapters"]}
    return {**meta, "chapters": dict(sorted(rows.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chapters", nargs="+", default=None, help="chapter number prefixes (05 08) or stems; default all")
    p.add_argument("--kernels", nargs="+", choices=tuple(KERNELS), default=["native", "avx2"])
    p.add_argument("--out", default=str(ROOT / "bench" / "timings.json"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
    p.add_argument("--append", action="store_true", help="replace the timed chapters' rows in --out, keep the others")
    args = p.parse_args(argv)
    paths = chapters(args.chapters)
    if not paths:
        p.error(f"no chapter matches {args.chapters}; chapters are {', '.join(c.stem for c in chapters(None))}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "native kernels": cpu_kernels(),
              "cpu_count": os.cpu_count(), "kernels": args.kernels, "chapters": {}}  # fmt: skip
    failed = False
    for i, path in enumerate(paths):
        order = args.kernels if i % 2 == 0 else args.kernels[::-1]  # alternate, so neither set always runs first
        runs = {k: run(path, k, args.timeout) for k in order}
        result["chapters"][path.stem] = {"commit": source_commit(path), "date": time.strftime("%Y-%m-%d %H:%M"),
                                         **{k: runs[k] for k in args.kernels}}  # fmt: skip
        for k in args.kernels:
            r = runs[k]
            failed |= not r["ran"] or bool(r.get("not_held"))
            took = f"{r['chapter_seconds']:.1f} s" if r.get("chapter_seconds") is not None else f"FAILED ({r.get('error')})"
            print(f"{path.stem} [{k}]: {took}; {r.get('cpu_use')}; probe {r.get('speed_probe_ms')} ms", flush=True)
    out = Path(args.out)
    if args.append and out.exists():
        result = merge(json.loads(out.read_text()), result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {out}\n\n{table(result)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
